#!/usr/bin/python3
"""serve-ttft.py - time to first token of a long conversation over HTTP.

Starts `seqboat serve` (the bundled model unless -m), holds a conversation
of 20 turns whose user messages are about 500 tokens each (10,000 tokens of
history by turn 20), and measures, for every turn, the time from sending the
streaming request to the first content delta. Then it sends turn 20 again
to a server without a cache (--cache-bytes 0), which has to read the whole
history. A benchmark: it prints figures and asserts nothing.

usage: tests/bench/serve-ttft.py [--turns 20] [--words 470] [serve options...]
"""
import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the people of our nation have built a union stronger than any "
         "before it and the congress must now act to keep the promise of "
         "liberty for every family in every state while the economy grows "
         "and our workers find new jobs in the industries of the future").split()


def start(args, log):
    p = subprocess.Popen([os.path.join(ROOT, "build", "seqboat"), "serve", "--port", "0"] + args,
                         stderr=log)
    for _ in range(600):
        with open(log.name) as f:
            m = re.search(r"listening on http://[^ ]*:(\d+) ", f.read())
        if m:
            port = int(m.group(1))
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return p, port
            except OSError:
                pass
        time.sleep(0.1)
    p.kill()
    sys.exit("serve-ttft: the server did not start")


def turn(port, messages, max_tokens):
    """Streams one reply: (ttft seconds, reply text, usage)."""
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "stream": True,
                       "temperature": 0, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    ttft, text, usage = None, "", None
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk["choices"]:
            piece = ch["delta"].get("content") or ""
            if piece and ttft is None:
                ttft = time.perf_counter() - t0
            text += piece
    c.close()
    return ttft if ttft is not None else time.perf_counter() - t0, text, usage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--words", type=int, default=470, help="words per user message")
    ap.add_argument("--reply", type=int, default=16, help="tokens per reply")
    a, serve_args = ap.parse_known_args()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    p, port = start(serve_args, log)
    messages = [{"role": "system", "content": "You are a speech writer."}]
    rows = []
    try:
        for t in range(a.turns):
            words = [WORDS[(t * 7 + i * 3) % len(WORDS)] for i in range(a.words)]
            messages.append({"role": "user", "content": " ".join(words) + "."})
            ttft, text, usage = turn(port, messages, a.reply)
            rows.append((t + 1, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], ttft))
            messages.append({"role": "assistant", "content": text})
    finally:
        p.terminate()
        p.wait()
    messages.pop()  # the last reply: turn N again, from nothing
    log2 = tempfile.NamedTemporaryFile("w+", suffix=".log")
    p, port = start(serve_args + ["--cache-bytes", "0"], log2)
    try:
        cold, _, cold_usage = turn(port, messages, a.reply)
    finally:
        p.terminate()
        p.wait()
    print(f"seqboat serve: time to first token per turn ({os.cpu_count()} cores, "
          f"replies of {a.reply} tokens, greedy)")
    print(f"{'turn':>4} {'prompt tokens':>14} {'cached':>8} {'ttft ms':>9}")
    for n, prompt, cached, ttft in rows:
        print(f"{n:>4} {prompt:>14} {cached:>8} {ttft * 1e3:>9.1f}")
    first, last = rows[0][3], rows[-1][3]
    print(f"turn {rows[-1][0]} / turn 1: {last / first:.2f}x "
          f"({rows[-1][1]} prompt tokens, {rows[-1][2]} of them cached)")
    print(f"turn {rows[-1][0]} without the cache (every token read again): {cold * 1e3:.1f} ms, "
          f"{cold / last:.0f}x the cached turn's ({cold_usage['prompt_tokens']} prompt tokens)")


if __name__ == "__main__":
    main()
