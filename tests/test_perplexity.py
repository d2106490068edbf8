#!/usr/bin/python3
"""`seqboat perplexity` and `seqboat activations` on the official fixtures.

The reference numbers come from the fixture's expected.safetensors (the
official implementation's logits and router decisions), read here with
numpy alone: perplexity must reproduce the NLL of those logits, and the
activation page must highlight exactly the tokens the official routers
activated."""

import html.parser
import json
import math
import os
import re
import struct
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

import numpy as np

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.environ.get("SB_FIXTURES", os.path.join(SRCDIR, "tests", "fixtures"))
MODELS = os.environ.get("SB_FIXTURE_MODELS")
SEQBOAT = os.environ.get("SB_SEQBOAT")
CASES = ("rotary-softmax", "simple-relu2-ffn")
DTYPES = {"F32": np.float32, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def load_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(buf[8 + n + a:8 + n + b], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def expected(case):
    return load_safetensors(os.path.join(FIXTURES, case, "expected.safetensors"))


def reference_nll(logits, tokens):
    """Per-position NLL of tokens[1:] under rows 0..T-2, in float64."""
    lg = logits.astype(np.float64)
    mx = lg.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=1))
    t = tokens.astype(np.int64)
    return lse[:-1] - lg[np.arange(len(t) - 1), t[1:]]


def run(*args, check=True):
    r = subprocess.run([SEQBOAT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if check and r.returncode != 0:
        raise AssertionError("seqboat %s failed (%d): %s" % (" ".join(args[:2]), r.returncode, r.stderr))
    return r


def ids_arg(tokens):
    return " ".join(str(int(t)) for t in tokens)


@unittest.skipUnless(SEQBOAT and MODELS, "needs SB_SEQBOAT and SB_FIXTURE_MODELS (run through meson test)")
class Perplexity(unittest.TestCase):
    def ppl_json(self, case, *args):
        r = run("perplexity", "-m", os.path.join(MODELS, case), "--json", *args)
        return json.loads(r.stdout)

    def test_whole_stream_matches_official_logits(self):
        for case in CASES:
            with self.subTest(case=case):
                e = expected(case)
                ref = reference_nll(e["logits"], e["tokens"])
                j = self.ppl_json(case, "--ids", ids_arg(e["tokens"]))
                self.assertEqual(j["tokens"], len(e["tokens"]))
                self.assertEqual(j["tokens_scored"], len(e["tokens"]) - 1)
                self.assertEqual(j["chunks"], 1)
                self.assertIsNone(j["chunk"])
                self.assertAlmostEqual(j["mean_nll"], ref.mean(), delta=1e-4)
                self.assertAlmostEqual(j["nll_sum"], ref.sum(), delta=1e-4 * len(ref))
                self.assertAlmostEqual(j["perplexity"], math.exp(j["mean_nll"]), delta=1e-9 * j["perplexity"])
                self.assertAlmostEqual(j["bits_per_token"], j["mean_nll"] / math.log(2), delta=1e-12)
                self.assertIsNone(j["bits_per_byte"])
                self.assertIsNone(j["bytes"])
                acts = e["act"].astype(np.float64)
                # The rate counts the tokens read: all but the last.
                for l, rate in enumerate(j["act_rate"]):
                    self.assertAlmostEqual(rate, acts[l, :-1].mean(), delta=1e-12)

    def test_text_output_has_the_same_numbers(self):
        e = expected("rotary-softmax")
        ref = reference_nll(e["logits"], e["tokens"])
        out = run("perplexity", "-m", os.path.join(MODELS, "rotary-softmax"),
                  "--ids", ids_arg(e["tokens"])).stdout
        fields = dict(re.findall(r"^(tokens scored|mean nll|perplexity|bits per token)\s+([0-9.]+)", out, re.M))
        self.assertEqual(int(fields["tokens scored"]), len(ref))
        self.assertAlmostEqual(float(fields["mean nll"]), ref.mean(), delta=1e-4)
        self.assertAlmostEqual(float(fields["perplexity"]), math.exp(ref.mean()), delta=1e-3 * math.exp(ref.mean()))
        self.assertNotIn("bits per byte", out)

    def test_chunks_start_from_an_empty_state(self):
        for case in CASES:
            with self.subTest(case=case):
                e = expected(case)
                tokens = e["tokens"]
                ref = reference_nll(e["logits"], tokens)
                j = self.ppl_json(case, "--ids", ids_arg(tokens), "--chunk", "48")
                self.assertEqual(j["chunks"], 2)
                self.assertEqual(j["tokens_scored"], 94)
                # The first chunk is the fixture's first 47 predictions; the
                # second is the stream of its own tokens from a fresh state.
                second = self.ppl_json(case, "--ids", ids_arg(tokens[48:]))
                self.assertAlmostEqual(j["nll_sum"], ref[:47].sum() + second["nll_sum"], delta=1e-3)
                # A last chunk shorter than N is scored too: 96 = 40 + 40 + 16.
                k = self.ppl_json(case, "--ids", ids_arg(tokens), "--chunk", "40")
                self.assertEqual((k["chunks"], k["tokens_scored"]), (3, 39 + 39 + 15))
                # A chunk longer than the stream is the whole stream.
                w = self.ppl_json(case, "--ids", ids_arg(tokens), "--chunk", "1000")
                self.assertAlmostEqual(w["mean_nll"], ref.mean(), delta=1e-4)

    def test_file_is_bos_then_its_tokens_and_bits_per_byte_use_its_size(self):
        model = os.path.join(MODELS, "rotary-softmax")
        with tempfile.TemporaryDirectory(prefix="sb-test-ppl-") as tmp:
            path = os.path.join(tmp, "text.txt")
            text = "w4 w5 w6 w7\nw12 w13 w14 w9 w30\nw31 w8\n"
            with open(path, "w") as f:
                f.write(text)
            ids = run("tokenize", "-m", model, "-f", path).stdout.split()
            no_bos = run("tokenize", "-m", model, "--no-bos", "-f", path).stdout.split()
            self.assertEqual(len(ids), len(no_bos) + 1)
            j = self.ppl_json("rotary-softmax", "-f", path)
            k = self.ppl_json("rotary-softmax", "--ids", " ".join(ids))
            self.assertEqual(j["tokens"], len(ids))
            self.assertEqual(j["tokens_scored"], len(ids) - 1)
            self.assertAlmostEqual(j["nll_sum"], k["nll_sum"], delta=1e-9 * abs(k["nll_sum"]))
            self.assertEqual(j["bytes"], len(text.encode()))
            self.assertAlmostEqual(j["bits_per_byte"], j["nll_sum"] / math.log(2) / len(text.encode()),
                                   delta=1e-12)

    def test_refusals(self):
        model = os.path.join(MODELS, "rotary-softmax")
        self.assertEqual(run("perplexity", "-m", model, check=False).returncode, 2)
        self.assertEqual(run("perplexity", "-m", model, "--ids", "1 2", "-f", "x", check=False).returncode, 2)
        r = run("perplexity", "-m", model, "--ids", "1 2 100000", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn("vocabulary", r.stderr)
        self.assertEqual(run("perplexity", "-m", model, "--ids", "5", check=False).returncode, 65)
        self.assertEqual(run("perplexity", "-m", model, "--ids", "1 2", "--chunk", "1",
                             check=False).returncode, 2)
        self.assertEqual(run("perplexity", "-m", model, "-f", "/nonexistent/file",
                             check=False).returncode, 74)
        r = run("perplexity", "--help")
        self.assertIn("--chunk", r.stdout)
        self.assertEqual(r.stderr, "")


class _Spans(html.parser.HTMLParser):
    """Collects, per layer block, the index of every highlighted token."""

    def __init__(self):
        super().__init__()
        self.layers = []
        self.stack = []

    VOID = {"meta", "br", "link", "img", "input", "hr"}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "div" and a.get("class") == "txt":
            self.layers.append([])
        if tag == "span" and self.layers and "title" in a:
            m = re.match(r"token (\d+), id (\d+)", a["title"])
            if m and "on" in (a.get("class") or "").split():
                self.layers[-1].append(int(m.group(1)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, "unbalanced </%s>" % tag
        self.stack.pop()

    def handle_startendtag(self, tag, attrs):
        pass


@unittest.skipUnless(SEQBOAT and MODELS, "needs SB_SEQBOAT and SB_FIXTURE_MODELS (run through meson test)")
class Activations(unittest.TestCase):
    def test_html_highlights_the_official_router_decisions(self):
        for case in CASES:
            with self.subTest(case=case), tempfile.TemporaryDirectory(prefix="sb-test-act-") as tmp:
                e = expected(case)
                out = os.path.join(tmp, "page.html")
                run("activations", "-m", os.path.join(MODELS, case), "--ids", ids_arg(e["tokens"]), "-o", out)
                self.assertEqual(os.listdir(tmp), ["page.html"])
                with open(out, encoding="utf-8") as f:
                    page = f.read()
                self.assertNotRegex(page, r"(src|href)\s*=|<script|<link|@import|url\(")
                p = _Spans()
                p.feed(page)
                p.close()
                self.assertEqual(p.stack, [])
                act = e["act"]
                self.assertEqual(len(p.layers), act.shape[0])
                for l in range(act.shape[0]):
                    self.assertEqual(p.layers[l], [int(t) for t in np.nonzero(act[l])[0]])
                    n = int(act[l].sum())
                    self.assertIn("layer %d: %.1f%% activated (%d of %d tokens)"
                                  % (l, 100.0 * n / act.shape[1], n, act.shape[1]), page)

    def test_svg_parses_and_marks_the_same_tokens(self):
        e = expected("simple-relu2-ffn")
        r = run("activations", "-m", os.path.join(MODELS, "simple-relu2-ffn"), "--ids", ids_arg(e["tokens"]),
                "--format", "svg")
        root = ET.fromstring(r.stdout)
        ns = "{http://www.w3.org/2000/svg}"
        groups = root.findall(ns + "g")
        self.assertEqual(len(groups), e["act"].shape[0])
        for l, g in enumerate(groups):
            marked = [el for el in g.findall(ns + "rect") if el.get("fill") == "#f9cb9c"]
            self.assertEqual(len(marked), int(e["act"][l].sum()))

    def test_text_is_escaped(self):
        model = os.path.join(MODELS, "rotary-softmax")
        text = 'w4 <b>bold</b> & "q" \'s\' w5'
        for fmt in ("html", "svg"):
            with self.subTest(fmt=fmt):
                page = run("activations", "-m", model, "-p", text, "--format", fmt).stdout
                self.assertNotIn("<b>", page)
                self.assertNotIn("<unk>", page)
                self.assertIn("&lt;unk&gt;", page)
                if fmt == "svg":
                    ET.fromstring(page)
                else:
                    p = _Spans()
                    p.feed(page)
                    p.close()
                    self.assertEqual(p.stack, [])

    def test_refusals(self):
        model = os.path.join(MODELS, "rotary-softmax")
        self.assertEqual(run("activations", "-m", model, check=False).returncode, 2)
        self.assertEqual(run("activations", "-m", model, "-p", "w4", "--format", "png",
                             check=False).returncode, 2)
        r = run("activations", "-m", model, "--ids", "3 99999", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stdout, "")


def log_softmax(logits):
    lg = logits.astype(np.float64)
    mx = lg.max(axis=1, keepdims=True)
    return lg - (mx + np.log(np.exp(lg - mx).sum(axis=1, keepdims=True)))


@unittest.skipUnless(SEQBOAT and MODELS, "needs SB_SEQBOAT and SB_FIXTURE_MODELS (run through meson test)")
class Uncertainty(unittest.TestCase):
    """The +/- of the estimate, per-chunk results, and --kl-divergence, as
    llama-perplexity reports them."""

    model = property(lambda self: os.path.join(MODELS, "rotary-softmax"))

    def test_uncertainty_is_the_standard_error_of_the_official_nll(self):
        e = expected("rotary-softmax")
        ref = reference_nll(e["logits"], e["tokens"])
        j = json.loads(run("perplexity", "-m", self.model, "--json", "--ids", ids_arg(e["tokens"])).stdout)
        se = ref.std(ddof=1) / math.sqrt(len(ref))
        self.assertAlmostEqual(j["mean_nll_uncertainty"], se, delta=1e-3 * se)
        self.assertAlmostEqual(j["perplexity_uncertainty"], j["perplexity"] * se, delta=1e-3 * j["perplexity"] * se)
        out = run("perplexity", "-m", self.model, "--ids", ids_arg(e["tokens"])).stdout
        m = re.search(r"^perplexity\s+([0-9.]+) \+/- ([0-9.]+)$", out, re.M)
        self.assertIsNotNone(m, out)
        self.assertAlmostEqual(float(m.group(2)), j["perplexity_uncertainty"], delta=1e-4)
        self.assertRegex(out, r"(?m)^mean nll\s+[0-9.]+ \+/- [0-9.]+ nats$")

    def test_per_chunk_results(self):
        e = expected("rotary-softmax")
        tokens = e["tokens"]
        ref = reference_nll(e["logits"], tokens)
        j = json.loads(run("perplexity", "-m", self.model, "--json", "--ids", ids_arg(tokens),
                           "--chunk", "40").stdout)
        ch = j["chunk_results"]
        self.assertEqual([c["chunk"] for c in ch], [1, 2, 3])
        self.assertEqual([c["tokens_scored"] for c in ch], [39, 39, 15])
        # the first chunk is the fixture's first 39 predictions
        self.assertAlmostEqual(ch[0]["nll_sum"], ref[:39].sum(), delta=1e-3)
        self.assertAlmostEqual(sum(c["nll_sum"] for c in ch), j["nll_sum"], delta=1e-9 * abs(j["nll_sum"]))
        self.assertAlmostEqual(ch[-1]["running_perplexity"], j["perplexity"], delta=1e-9 * j["perplexity"])
        for c in ch:
            self.assertAlmostEqual(c["perplexity"], math.exp(c["nll_sum"] / c["tokens_scored"]), delta=1e-9 * c["perplexity"])
        out = run("perplexity", "-m", self.model, "--ids", ids_arg(tokens), "--chunk", "40").stdout
        m = re.search(r"^running ppl\s+\[1\]([0-9.]+),\[2\]([0-9.]+),\[3\]([0-9.]+)$", out, re.M)
        self.assertIsNotNone(m, out)
        self.assertAlmostEqual(float(m.group(3)), j["perplexity"], delta=1e-3)
        # no chunks: one entry, the whole stream
        w = json.loads(run("perplexity", "-m", self.model, "--json", "--ids", ids_arg(tokens)).stdout)
        self.assertEqual(len(w["chunk_results"]), 1)
        self.assertNotIn("running ppl", run("perplexity", "-m", self.model, "--ids", ids_arg(tokens)).stdout)

    def test_kl_divergence_of_a_q8_copy_against_numpy(self):
        e = expected("rotary-softmax")
        tokens = e["tokens"]
        ids = ids_arg(tokens)
        with tempfile.TemporaryDirectory(prefix="sb-test-kld-") as tmp:
            q8 = os.path.join(tmp, "q8")
            run("quantize", "-m", self.model, "-o", q8, "--type", "q8")
            base = os.path.join(tmp, "base.kld")
            r = run("perplexity", "-m", self.model, "--ids", ids, "--kl-divergence-base", base, "--json")
            self.assertEqual(os.path.getsize(base), 32 + 4 * len(tokens) + 4 * 72 * (len(tokens) - 1))
            # against itself: nothing diverges
            same = json.loads(run("perplexity", "-m", self.model, "--ids", ids, "--kl-divergence-base", base,
                                  "--kl-divergence", "--json").stdout)["kl_divergence"]
            self.assertLess(same["kld_mean"], 1e-9)
            self.assertEqual(same["same_top_p"], 1.0)
            self.assertLess(abs(same["delta_p_mean"]), 1e-9)
            # the q8 copy against the F32 base, checked with numpy from the
            # official logits (base) and the q8 model's logits
            j = json.loads(run("perplexity", "-m", q8, "--ids", ids, "--kl-divergence-base", base,
                               "--kl-divergence", "--json").stdout)
            k = j["kl_divergence"]
            out = os.path.join(tmp, "q8.safetensors")
            run("logits", "-m", q8, "--ids", ids, "-o", out)
            lq = log_softmax(load_safetensors(out)["logits"])[:-1]
            lb = log_softmax(e["logits"])[:-1]
            kld = (np.exp(lb) * (lb - lq)).sum(axis=1)
            t = tokens[1:].astype(np.int64)
            rows = np.arange(len(t))
            dp = np.exp(lq[rows, t]) - np.exp(lb[rows, t])
            self.assertEqual(k["positions"], len(t))
            self.assertGreater(k["kld_mean"], 0)
            self.assertAlmostEqual(k["kld_mean"], kld.mean(), delta=0.05 * kld.mean() + 1e-7)
            self.assertAlmostEqual(k["kld_max"], kld.max(), delta=0.05 * kld.max() + 1e-7)
            self.assertAlmostEqual(k["kld_median"], float(np.median(kld)), delta=0.05 * kld.max() + 1e-7)
            self.assertAlmostEqual(k["delta_p_mean"], dp.mean(), delta=1e-4)
            self.assertAlmostEqual(k["delta_p_rms"], math.sqrt((dp ** 2).mean()), delta=1e-4)
            self.assertAlmostEqual(k["same_top_p"], float((lq.argmax(1) == lb.argmax(1)).mean()), delta=1.5 / len(t))
            self.assertAlmostEqual(k["ppl"], j["perplexity"], delta=1e-6 * j["perplexity"])
            text = run("perplexity", "-m", q8, "--ids", ids, "--kl-divergence-base", base, "--kl-divergence").stdout
            self.assertRegex(text, r"(?m)^Mean    KLD: +[0-9.]+ \+/- +[0-9.]+$")
            self.assertRegex(text, r"(?m)^Same top p +: +[0-9.]+ \+/- +[0-9.]+ %$")
            # another stream, another chunking, no base: refused in one line
            for args, status in ((["--ids", ids_arg(tokens[:50]), "--kl-divergence-base", base, "--kl-divergence"], 65),
                                 (["--ids", ids, "--chunk", "48", "--kl-divergence-base", base, "--kl-divergence"], 65),
                                 (["--ids", ids, "--kl-divergence"], 2),
                                 (["--ids", ids, "--kl-divergence-base", os.path.join(tmp, "none"), "--kl-divergence"], 74)):
                with self.subTest(args=args[2:]):
                    r = run("perplexity", "-m", q8, *args, check=False)
                    self.assertEqual(r.returncode, status, r.stderr)
                    self.assertEqual(r.stdout, "")
                    self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
            with open(os.path.join(tmp, "bad.kld"), "wb") as f:
                f.write(b"not a base file at all, but long enough for a header")
            r = run("perplexity", "-m", q8, "--ids", ids, "--kl-divergence-base", os.path.join(tmp, "bad.kld"),
                    "--kl-divergence", check=False)
            self.assertEqual(r.returncode, 65)
            self.assertIn("not a base logits file", r.stderr)
            self.assertEqual(sorted(os.listdir(tmp)), ["bad.kld", "base.kld", "q8", "q8.safetensors"])


if __name__ == "__main__":
    unittest.main()
