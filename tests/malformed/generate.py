#!/usr/bin/python3
"""Writes the malformed-input corpus: bad model directories and bad prompt
files, each made from one good model directory by breaking one thing.

usage: generate.py GOOD_MODEL_DIR OUT_DIR

OUT_DIR/<case>/ gets the files of one case and OUT_DIR/manifest.json lists
the cases: what to run and what a correct refusal looks like (tests/malformed/
check.py runs them). Every case breaks exactly one rule, so the refusal must
name that rule; the words each case expects are alternatives describing the
fault, not copies of seqboat's messages.

Standard library only, so it runs on any python3.
"""
import json
import os
import shutil
import struct
import sys

GOOD = None
OUT = None
CASES = []

ST = "model.safetensors"
CFG = "config.yaml"
DICT = "dict.txt"


def read(name):
    with open(os.path.join(GOOD, name), "rb") as f:
        return f.read()


def good_header():
    """The good file's header (an ordered dict) and its data area."""
    raw = read(ST)
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_bytes(header, data, pad=True):
    """A safetensors file from a header (dict or raw bytes) and data."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def model_dir(name, replace=None, drop=()):
    """A copy of the good model directory with some files replaced."""
    d = os.path.join(OUT, name)
    os.makedirs(d)
    for f in os.listdir(GOOD):
        if f not in drop and f not in (replace or {}):
            shutil.copyfile(os.path.join(GOOD, f), os.path.join(d, f))
    for f, content in (replace or {}).items():
        with open(os.path.join(d, f), "wb") as fh:
            fh.write(content if isinstance(content, bytes) else content.encode())
    return d


def case(name, argv, file, words, status=(65,), **extra):
    """argv uses {dir} for the case directory and {good} for the good model."""
    CASES.append(dict(name=name, argv=argv, file=file, words=words,
                      status=list(status), **extra))


def model_case(name, file, words, replace=None, drop=(), cmd="info", status=(65,)):
    model_dir(name, replace, drop)
    if cmd == "info":
        argv = ["info", "-m", "{dir}"]
    else:
        argv = ["tokenize", "-m", "{dir}", "w4 w5"]
    case(name, argv, file, words, status)


# ------------------------------------------------ SentencePiece protobufs

def pb_varint(x):
    out = b""
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_fields(data):
    """The (field, wire type, raw bytes of the whole field) of a message."""
    i, out = 0, []
    while i < len(data):
        start = i
        key = 0
        shift = 0
        while True:
            c = data[i]
            i += 1
            key |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                break
        f, t = key >> 3, key & 7
        body = None
        if t == 0:
            while data[i] & 0x80:
                i += 1
            i += 1
        elif t == 1:
            i += 8
        elif t == 5:
            i += 4
        elif t == 2:
            n = 0
            shift = 0
            while True:
                c = data[i]
                i += 1
                n |= (c & 0x7F) << shift
                shift += 7
                if c < 0x80:
                    break
            body = data[i:i + n]
            i += n
        else:
            raise ValueError("wire type %d" % t)
        out.append((f, t, data[start:i], body))
    return out


def pb_bytes_field(f, body):
    return pb_varint(f << 3 | 2) + pb_varint(len(body)) + body


def spm_with_charsmap(model, charsmap, spec=3):
    """model with the precompiled_charsmap of normalizer_spec (spec 3) or
    denormalizer_spec (5) replaced by charsmap."""
    out, done = b"", False
    for f, t, raw, body in pb_fields(model):
        if f == spec and t == 2 and not done:
            sub = b"".join(r for sf, st, r, _ in pb_fields(body) if sf != 2)
            out += pb_bytes_field(spec, pb_bytes_field(2, charsmap) + sub)
            done = True
        else:
            out += raw
    if not done:
        out += pb_bytes_field(spec, pb_bytes_field(2, charsmap))
    return out


def darts_unit(label=0, offset=0, leaf=False, value=None):
    """One darts-clone double-array unit (32 bits, little-endian)."""
    if value is not None:
        return struct.pack("<I", (1 << 31) | value)
    u = label
    if leaf:
        u |= 1 << 8
    if offset < (1 << 21):
        u |= offset << 10
    else:
        assert offset % 256 == 0
        u |= (offset << 2) | (1 << 9)
    return struct.pack("<I", u)


def charsmap(rules, strings, n_units=512, trie_bytes=None):
    """A precompiled_charsmap mapping each one-byte key of rules
    ({byte: string index}) through a two-block trie: the root's children
    lie at 256 ^ byte, each a leaf whose value unit is at 511 ^ byte."""
    units = [b"\0\0\0\0"] * n_units
    units[0] = darts_unit(offset=256)
    for c, v in rules.items():
        child = 256 ^ c
        leafpos = 511 ^ c if (511 ^ c) != child else 510 ^ c
        units[child] = darts_unit(label=c, offset=child ^ leafpos, leaf=True)
        units[leafpos] = darts_unit(value=v)
    trie = b"".join(units)
    size = len(trie) if trie_bytes is None else trie_bytes
    return struct.pack("<I", size) + trie + strings


# ------------------------------------------------------------- safetensors

def st_case(name, content, words):
    model_case("st-" + name, ST, words, {ST: content})


def safetensors_cases():
    hdr, data = good_header()
    names = [k for k in hdr if k != "__metadata__"]
    first, second = names[0], names[1]
    raw = read(ST)
    (hlen,) = struct.unpack("<Q", raw[:8])

    st_case("empty", b"", ["short", "truncat", "too small", "header", "empty"])
    st_case("len-only-4-bytes", raw[:4], ["short", "truncat", "too small", "header"])
    st_case("truncated-header", raw[:8 + hlen // 2], ["header", "past", "end", "truncat", "exceed"])
    st_case("truncated-data", raw[:len(raw) - 1000], ["offset", "data", "truncat", "size", "cover", "end"])
    st_case("header-len-past-eof", struct.pack("<Q", len(raw)) + raw[8:],
            ["header", "past", "end", "exceed", "larger", "beyond"])
    st_case("header-len-zero", struct.pack("<Q", 0) + raw[8:], ["header", "empty", "json", "object"])
    st_case("header-len-2^63", struct.pack("<Q", 1 << 63) + raw[8:],
            ["header", "100", "large", "exceed", "past"])
    # A header length just over the 100 MB limit inside a file that really is
    # that long (a sparse file: cheap to write), so only the limit can refuse it.
    d = model_dir("st-header-len-over-100mb")
    big = 100 * 1000 * 1000 + 8
    with open(os.path.join(d, ST), "wb") as f:
        f.write(struct.pack("<Q", big))
        f.write(b"{")
        f.truncate(8 + big + 16)
    case("st-header-len-over-100mb", ["info", "-m", "{dir}"], ST, ["100", "large", "limit", "exceed"])

    st_case("header-not-json", st_bytes(b"{this is not json", data), ["json", "header", "invalid", "parse"])
    st_case("header-array", st_bytes(b"[]", data), ["object", "header"])
    st_case("header-string", st_bytes(b'"x"', data), ["object", "header"])
    st_case("header-invalid-utf8", st_bytes(b'{"\xff\xfe": 1}', data), ["utf-8", "utf8", "json", "invalid"])
    st_case("header-nul", st_bytes(json.dumps(hdr).encode() + b"\0\0\0", data),
            ["json", "header", "nul", "invalid", "garbage"])
    st_case("header-deep-nesting", st_bytes(b"[" * 100000 + b"]" * 100000, data),
            ["json", "object", "deep", "nest", "header"])

    h = dict(hdr)
    t = dict(h[second])
    b0, b1 = t["data_offsets"]
    t["data_offsets"] = [b0 - 4, b1 - 4]
    h[second] = t
    st_case("overlapping-offsets", st_bytes(h, data), ["overlap", "offset", "contiguous", "gap"])

    h = dict(hdr)
    shift = {}
    for k in names[1:]:
        t = dict(h[k])
        t["data_offsets"] = [t["data_offsets"][0] + 4, t["data_offsets"][1] + 4]
        shift[k] = t
    h.update(shift)
    end0 = hdr[first]["data_offsets"][1]
    st_case("gap-between-tensors", st_bytes(h, data[:end0] + b"\0" * 4 + data[end0:]),
            ["gap", "offset", "contiguous", "overlap", "cover"])

    h = dict(hdr)
    t = dict(h[first])
    t["data_offsets"] = [t["data_offsets"][1], t["data_offsets"][0]]
    h[first] = t
    st_case("offsets-reversed", st_bytes(h, data), ["offset", "begin", "end", "order"])

    h = dict(hdr)
    t = dict(h[names[-1]])
    t["data_offsets"] = [t["data_offsets"][0], t["data_offsets"][1] + 4096]
    h[names[-1]] = t
    st_case("offset-past-end", st_bytes(h, data), ["offset", "end", "past", "beyond", "size", "range"])

    for label, shape in (("2^32x2^32", [1 << 32, 1 << 32]),
                         ("2^21-cubed", [1 << 21, 1 << 21, 1 << 21]),
                         ("2^64-1", [(1 << 64) - 1]),
                         ("2^62x4bytes", [1 << 62])):
        h = dict(hdr)
        t = dict(h[first])
        t["shape"] = shape
        h[first] = t
        st_case("shape-overflow-" + label, st_bytes(h, data),
                ["overflow", "shape", "too large", "range", "byte"])

    h = dict(hdr)
    t = dict(h[first])
    t["data_offsets"] = [t["data_offsets"][0], t["data_offsets"][1] - 4]
    h[first] = t
    st_case("byte-count-mismatch", st_bytes(h, data), ["byte", "size", "shape", "expected", "mismatch"])

    for label, dt in (("F8_E4M3", "F8_E4M3"), ("lowercase-f32", "f32"), ("number", 7), ("empty", "")):
        h = dict(hdr)
        t = dict(h[first])
        t["dtype"] = dt
        h[first] = t
        st_case("dtype-" + label, st_bytes(h, data), ["dtype"])

    # Duplicate names need raw JSON text: a dict cannot hold them.
    items = [json.dumps(k) + ":" + json.dumps(v) for k, v in hdr.items()]
    items.append(json.dumps(first) + ":" + json.dumps(hdr[first]))
    st_case("duplicate-name", st_bytes(("{" + ",".join(items) + "}").encode(), data),
            ["duplicate"])

    st_case("trailing-bytes", raw + b"\0" * 64, ["trailing", "cover", "size", "extra", "end", "offset"])

    for label, shape in (("negative", [-1, 64]), ("not-array", "72x64"),
                         ("float", [72.0, 64]), ("nine-dims", [1] * 9)):
        h = dict(hdr)
        t = dict(h[first])
        t["shape"] = shape
        h[first] = t
        st_case("shape-" + label, st_bytes(h, data), ["shape", "dim"])

    for label, offs in (("one-number", [0]), ("strings", ["0", "18432"]), ("negative", [-8, 18424])):
        h = dict(hdr)
        t = dict(h[first])
        t["data_offsets"] = offs
        h[first] = t
        st_case("offsets-" + label, st_bytes(h, data), ["offset"])

    h = dict(hdr)
    t = dict(h[first])
    del t["dtype"]
    h[first] = t
    st_case("missing-dtype", st_bytes(h, data), ["dtype", "missing"])

    h = dict(hdr)
    h["__metadata__"] = {"format": 1}
    st_case("metadata-not-string", st_bytes(h, data), ["metadata", "string"])

    h = dict(hdr)
    h[first] = [1, 2]
    st_case("entry-not-object", st_bytes(h, data), ["object", first])

    h = dict(hdr)
    t = dict(h[first])
    t["extra"] = True
    h[first] = t
    st_case("entry-unknown-key", st_bytes(h, data), ["extra", "unknown", "key"])

    # Well-formed files that do not fit the config: the model names the tensor.
    h = {k: v for k, v in hdr.items() if k != names[-1]}
    last = hdr[names[-1]]
    st_case("missing-tensor", st_bytes(h, data[:last["data_offsets"][0]]), [names[-1], "missing"])

    h = dict(hdr)
    emb = dict(h["embed_tokens.weight"])
    v, dd = emb["shape"]
    emb["shape"] = [dd, v]
    h["embed_tokens.weight"] = emb
    st_case("wrong-shape", st_bytes(h, data), ["embed_tokens.weight", "shape"])

    h = dict(hdr)
    emb = dict(h["embed_tokens.weight"])
    emb["dtype"] = "I32"
    h["embed_tokens.weight"] = emb
    st_case("integer-weights", st_bytes(h, data), ["embed_tokens.weight", "dtype", "I32"])


# -------------------------------------------------------------- config.yaml

def cfg_case(name, text, words, cmd="info"):
    model_case("cfg-" + name, CFG, words, {CFG: text}, cmd=cmd)


def config_cases():
    good = read(CFG).decode()

    def sub(old, new):
        assert old in good, old
        return good.replace(old, new, 1)

    cfg_case("empty", "", ["empty", "document", "mapping", "format", "missing"])
    cfg_case("unknown-top-key", good + "extra: 1\n", ["extra", "unknown"])
    cfg_case("unknown-arch-key", sub("  window: 16\n", "  window: 16\n  windw: 16\n"), ["windw", "unknown"])
    cfg_case("duplicate-key", sub("  window: 16\n", "  window: 16\n  window: 16\n"), ["window", "duplicate"])
    cfg_case("duplicate-section", good + "tokenizer:\n  type: fairseq\n", ["tokenizer", "duplicate"])
    cfg_case("int-is-text", sub("window: 16", "window: abc"), ["window", "integer"])
    cfg_case("int-is-quoted", sub("window: 16", 'window: "16"'), ["window", "integer"])
    cfg_case("int-is-float", sub("window: 16", "window: 16.0"), ["window", "integer"])
    cfg_case("int-is-hex", sub("window: 16", "window: 0x10"), ["window", "integer"])
    cfg_case("int-huge", sub("window: 16", "window: 99999999999999999999999"), ["window", "integer", "range"])
    cfg_case("int-negative", sub("window: 16", "window: -1"), ["window", "range", "integer"])
    cfg_case("bool-is-int", sub("normalize_before: true", "normalize_before: 1"), ["normalize_before", "bool", "true"])
    cfg_case("bool-is-yes", sub("normalize_before: true", "normalize_before: yes"), ["normalize_before", "bool", "true"])
    cfg_case("name-wrong", sub("attention: softmax", "attention: sofmax"), ["attention", "sofmax"])
    cfg_case("section-is-scalar", good.split("architecture:")[0] + "architecture: 5\n" +
             "tokenizer:" + good.split("tokenizer:")[1], ["architecture", "mapping"])
    cfg_case("missing-key", sub("  layers: 2\n", ""), ["layers", "missing"])
    cfg_case("missing-section", good.split("architecture:")[0] + "tokenizer:" + good.split("tokenizer:")[1],
             ["architecture", "missing"])
    cfg_case("format-2", sub("format: 1", "format: 2"), ["format"])
    cfg_case("top-level-list", "- 1\n- 2\n", ["mapping", "object", "top"])
    cfg_case("top-level-scalar", "hello\n", ["mapping", "object", "top"])
    cfg_case("deep-nesting", sub("window: 16", "window: " + "[" * 100000 + "]" * 100000),
             ["window", "integer", "deep", "nest", "sequence"])
    cfg_case("deep-block-nesting", good + "".join("  " * i + "k%d:\n" % i for i in range(3000)),
             ["k0", "unknown", "deep", "nest"])
    cfg_case("anchor", sub("window: 16", "window: &w 16"), ["anchor", "alias", "window"])
    cfg_case("alias", sub("window: 16", "window: &w 16").replace("  ffn_dim: 0", "  ffn_dim: *w"),
             ["anchor", "alias"])
    laughs = "".join("l%d: &l%d [%s]\n" % (i, i, ",".join(["*l%d" % (i - 1)] * 9) if i else '"lol"')
                     for i in range(10))
    cfg_case("billion-laughs", laughs + good, ["anchor", "alias", "unknown", "l0"])
    cfg_case("two-documents", good + "---\n" + good, ["document"])
    cfg_case("tag", sub("window: 16", "window: !!int 16"), ["tag", "window"])
    cfg_case("huge-scalar", sub("name: rotary-softmax", "name: " + "x" * (8 << 20)),
             ["name", "long", "1023", "bytes", "large"])
    cfg_case("huge-key", good + "x" * (8 << 20) + ": 1\n", ["unknown", "long", "key", "large"])
    cfg_case("invalid-utf8", sub("name: rotary-softmax", "name: rot\xffary").encode("latin-1"),
             ["utf-8", "utf8", "invalid"])
    cfg_case("nul-in-string", sub("name: rotary-softmax", 'name: "a\\0b"'), ["nul", "name"])
    cfg_case("syntax-error", sub("  window: 16\n", "  window: [16\n"), ["yaml", "syntax", "parse", "line", "expected"])
    cfg_case("tab-indent", sub("  window: 16\n", "\twindow: 16\n"), ["yaml", "tab", "line", "syntax", "parse"])
    cfg_case("odd-z-dim", sub("z_dim: 32", "z_dim: 31"), ["z_dim", "even"])
    # In-range dimensions too large to allocate (or for the file to hold):
    # refused as bad data naming the fields and the bytes, not "out of memory".
    cfg_case("huge-dims", sub("embed_dim: 64", "embed_dim: 1048576").replace("n_dim: 8", "n_dim: 4096")
             .replace("layers: 2", "layers: 64"), ["embed_dim", "n_dim", "bytes"])
    cfg_case("bos-out-of-range", sub("bos_id: 2", "bos_id: 72"), ["bos_id", "vocab"])
    cfg_case("file-escapes-dir", sub("file: dict.txt", "file: ../dict.txt"), ["file", "..", "/"])
    cfg_case("unsupported-option", sub("  window: 16\n", "  window: 16\n  local_pos: true\n"), ["local_pos"])
    cfg_case("batchnorm", sub("norm: layernorm", "norm: batchnorm"), ["batchnorm", "norm"])
    cfg_case("byte-symbols-with-spm", sub("type: fairseq", "type: sentencepiece"), ["byte_symbols", "sentencepiece"])
    # The config and the weights disagree: the refusal names the tensor.
    model_case("cfg-vocab-mismatch", ST, ["embed_tokens.weight"],
               {CFG: sub("vocab_size: 72", "vocab_size: 73")})


def st_poke(name, index, value):
    """The good model.safetensors with element `index` of F32 tensor
    `name` set to value."""
    raw = read(ST)
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    assert h[name]["dtype"] == "F32"
    at = 8 + n + h[name]["data_offsets"][0] + 4 * index
    return raw[:at] + struct.pack("<f", value) + raw[at + 4:]


def nonfinite_cases():
    nan, inf = float("nan"), float("inf")
    # A small tensor (widened at load) is checked on every load.
    for label, t, v in (("nan-ema-delta", "layers.0.slag_layer.move.delta", nan),
                        ("inf-norm-bias", "layers.1.slag_layer.norm.norm.bias", -inf)):
        model_case("weights-" + label, ST, [t, "finite", "nan", "infinity"], {ST: st_poke(t, 5, v)})
    # A large matrix is read whole only with --check (and by quantize).
    big = "layers.0.slag_layer.mx_proj.weight"
    model_dir("weights-nan-matrix", {ST: st_poke(big, 100, nan)})
    for cmd in (["info", "--check"], ["complete", "--check", "-p", "w4", "-n", "2"],
                ["quantize", "--type", "f16", "-o", "{dir}/q"]):
        case("weights-nan-matrix-" + cmd[0], cmd[:1] + ["-m", "{dir}"] + cmd[1:], ST,
             [big, "finite", "nan"], dir="weights-nan-matrix")
    # A finite F32 weight beyond F16's range: quantize --type f16 would
    # write an infinity.
    model_dir("weights-huge-for-f16", {ST: st_poke(big, 7, 1e6)})
    case("weights-huge-for-f16", ["quantize", "-m", "{dir}", "--type", "f16", "-o", "{dir}/q"], ST,
         [big, "f16", "finite"])


# --------------------------------------------------------------- tokenizers

def dict_case(name, content, words):
    model_case("dict-" + name, DICT, words, {DICT: content}, cmd="tokenize")


def tokenizer_cases():
    good = read(DICT)
    lines = good.split(b"\n")
    dict_case("empty", b"", ["empty", "vocab", "symbol", "size", "72"])
    dict_case("truncated-mid-line", good[:len(good) // 2] + b"w", ["line", "count", "expected"])
    dict_case("bad-count", lines[0].split(b" ")[0] + b" abc\n" + b"\n".join(lines[1:]), ["line 1", "count"])
    dict_case("duplicate-symbol", lines[0] + b"\n" + good, ["duplicate", lines[0].split(b" ")[0].decode()])
    # Fewer symbols than vocab_size is allowed (fairseq pads its vocabulary
    # in memory); more ids than the model has rows is not.
    dict_case("too-many-symbols", good + b"".join(b"extra%d 1\n" % i for i in range(10)),
              ["vocab_size", "72", "more"])
    dict_case("invalid-utf8", b"w\xff\xfe 5\n" + b"\n".join(lines[1:]), ["utf-8", "utf8", "line 1"])
    dict_case("nul-byte", b"w\x004 5\n" + b"\n".join(lines[1:]), ["nul", "line 1"])
    dict_case("no-count", b"\n".join(l.split(b" ")[0] for l in lines), ["line 1", "count"])

    spm = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "spm-tiny.model"), "rb").read()
    cfg = read(CFG).decode().replace("type: fairseq", "type: sentencepiece").replace(
        "file: dict.txt", "file: tokenizer.model").replace("  byte_symbols: auto\n", "")
    for label, content in (("empty", b""), ("truncated", spm[:len(spm) // 2]),
                           ("garbage", bytes(range(256)) * 4)):
        model_case("spm-" + label, "tokenizer.model", ["sentencepiece", "parse", "model", "invalid", "empty"],
                   {CFG: cfg, "tokenizer.model": content}, drop=(DICT,), cmd="tokenize")
    # A malformed normalizer charsmap crashed SentencePiece's normalizer:
    # each is refused before SentencePiece sees it, naming the field.
    words = ["precompiled_charsmap", "charsmap"]
    A = ord("A")
    bad = {
        # the example: a trie of 0xff units, then "a\0"
        "ff-trie": struct.pack("<I", 0x40) + b"\xff" * 64 + b"a\0",
        "value-past-strings": charsmap({A: 9}, b"a\0"),
        "string-without-nul": charsmap({A: 0}, b"ab"),
        "trie-size-past-blob": charsmap({A: 0}, b"a\0", trie_bytes=1 << 20),
        "blob-3-bytes": b"\0\0\0",
        "root-offset-outside": struct.pack("<I", 1024) + darts_unit(offset=1 << 20) + b"\0" * 1020 + b"a\0",
        "children-past-trie": charsmap({A: 0}, b"a\0", trie_bytes=300 * 4),
    }
    for label, blob in bad.items():
        model_case("spm-charsmap-" + label, "tokenizer.model", words,
                   {CFG: cfg, "tokenizer.model": spm_with_charsmap(spm, blob)}, drop=(DICT,), cmd="tokenize")
    model_case("spm-denormalizer-charsmap", "tokenizer.model", ["denormalizer_spec", "charsmap"],
               {CFG: cfg, "tokenizer.model": spm_with_charsmap(spm, bad["ff-trie"], spec=5)},
               drop=(DICT,), cmd="tokenize")


# --------------------------------------------------------------- JSONL input

def jsonl_case(name, content, bad_lines, words, extra_args=(), status=(65,), good_lines=None):
    """bad_lines: 1-based line numbers that must get an error record whose
    message names one of words; every other non-blank line must succeed."""
    d = os.path.join(OUT, "jsonl-" + name)
    os.makedirs(d)
    with open(os.path.join(d, "prompts.jsonl"), "wb") as f:
        f.write(content)
    case("jsonl-" + name,
         ["complete", "-m", "{good}", "-f", "{dir}/prompts.jsonl", "--format", "jsonl",
          "--no-timings", "-n", "2", "--temp", "0"] + list(extra_args),
         "prompts.jsonl", words, status, jsonl=True, bad_lines=bad_lines,
         good_lines=good_lines)


def jsonl_cases():
    ok = b'{"id": "ok", "prompt": "w4 w5"}\n'
    jsonl_case("blank-lines", b'\n  \n{"id": 1, "prompt": "w4"}\n\r\n\t\n{"id": 2, "prompt": "w5"}\n\n',
               [], [], status=(0,), good_lines=[3, 6])
    jsonl_case("invalid-utf8", ok + b'{"id": "u", "prompt": "w4 \xff\xfe w5"}\n', [2], ["utf-8", "utf8", "invalid", "decode byte"])
    jsonl_case("missing-prompt", ok + b'{"id": "m"}\n', [2], ["prompt"])
    jsonl_case("prompt-number", ok + b'{"id": "n", "prompt": 5}\n', [2], ["prompt", "string"])
    jsonl_case("prompt-null", ok + b'{"id": "n", "prompt": null}\n', [2], ["prompt", "string"])
    jsonl_case("id-float", ok + b'{"id": 1.5, "prompt": "w4"}\n', [2], ["id"])
    jsonl_case("id-object", ok + b'{"id": {"a": 1}, "prompt": "w4"}\n', [2], ["id"])
    jsonl_case("duplicate-ids", ok + b'{"id": "ok", "prompt": "w6"}\n', [2], ["duplicate"])
    jsonl_case("duplicate-keys", ok + b'{"id": "k", "prompt": "w4", "prompt": "w5"}\n', [2], ["duplicate"])
    jsonl_case("not-object", ok + b'[1, 2, 3]\n', [2], ["object"])
    jsonl_case("truncated-object", ok + b'{"id": "t", "prompt": "w4\n', [2], ["json"])
    jsonl_case("nul-escape", ok + b'{"id": "z", "prompt": "w4\\u0000w5"}\n', [2], ["nul"])
    jsonl_case("temp-is-string", ok + b'{"id": "s", "prompt": "w4", "temp": "hot"}\n', [2], ["temp"])
    jsonl_case("max-tokens-float", ok + b'{"id": "x", "prompt": "w4", "max_tokens": 2.5}\n', [2], ["max_tokens"])
    jsonl_case("seed-negative", ok + b'{"id": "x", "prompt": "w4", "seed": -3}\n', [2], ["seed"])
    jsonl_case("stop-not-strings", ok + b'{"id": "x", "prompt": "w4", "stop": [1]}\n', [2], ["stop"])
    jsonl_case("unknown-field", ok + b'{"id": "x", "prompt": "w4", "temprature": 1}\n', [2], ["temprature"])
    jsonl_case("deep-nesting", ok + b'{"id": "d", "prompt": "w4", "stop": ' + b"[" * 100000 +
               b"]" * 100000 + b"}\n", [2], ["json", "nest", "deep", "stop"])
    jsonl_case("binary-line", ok + bytes(range(1, 10)) + b"\x80\xff\n", [2], ["json"],
               extra_args=["--format-in", "jsonl"])
    # 100 MB on one line: refused for that line without reading it into memory.
    big = b'{"id": "big", "prompt": "' + b"w4 " * (100 * 1000 * 1000 // 3) + b'"}\n'
    jsonl_case("100mb-line", ok + big + b'{"id": "after", "prompt": "w5"}\n', [2], ["long", "line", "bytes", "limit"])


# ------------------------------------------------------------------- usage

def usage_cases():
    case("usage-unknown-flag", ["info", "-m", "{good}", "--no-such-flag"], "--no-such-flag",
         ["unknown", "option", "flag", "unrecognized"], status=(2,))
    case("usage-bad-number", ["complete", "-m", "{good}", "-p", "w4", "-n", "lots"], "max-tokens",
         ["integer", "number", "expected"], status=(2,))
    case("usage-format", ["complete", "-m", "{good}", "-p", "w4", "--format", "xml"], "--format",
         ["xml", "format"], status=(2,))


def main():
    global GOOD, OUT
    if len(sys.argv) != 3:
        sys.exit("usage: generate.py GOOD_MODEL_DIR OUT_DIR")
    GOOD, OUT = sys.argv[1], sys.argv[2]
    os.makedirs(OUT, exist_ok=True)
    safetensors_cases()
    config_cases()
    nonfinite_cases()
    tokenizer_cases()
    jsonl_cases()
    usage_cases()
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(CASES, f, indent=1)
    print("%d cases in %s" % (len(CASES), OUT))


if __name__ == "__main__":
    main()
