"""The config.yaml of a seqboat model directory (docs/model-format.md):
a validated in-memory form (a plain dict with the document's nesting),
writing it as YAML text, and reading it back."""

import json
import math
import re

ARCH_INT_KEYS = ("vocab_size", "embed_dim", "z_dim", "hidden_dim", "n_dim",
                 "layers", "window", "ffn_dim", "max_positions",
                 "truncation_length")
ARCH_CHOICES = {
    "rel_pos_bias": ("rotary", "simple"),
    "attention": ("softmax", "relu2", "laplace"),
    "norm": ("layernorm", "scalenorm", "rmsnorm"),
    "activation": ("silu", "gelu", "relu"),
}
ARCH_BOOL_KEYS = ("normalize_before", "affine_final_norm", "scale_embedding",
                  "tied_embeddings")
ARCH_KEYS = ARCH_INT_KEYS + tuple(ARCH_CHOICES) + ARCH_BOOL_KEYS
TOKENIZER_KEYS = ("type", "file", "byte_symbols", "bos_id", "eos_id",
                  "pad_id", "unk_id")
CHAT_KEYS = ("system_prefix", "system_suffix", "user_prefix", "user_suffix",
             "assistant_prefix", "assistant_suffix")
PROVENANCE_KEYS = ("name", "source", "license")
MAX_STR = 1023
# Strings written unquoted: identifiers that YAML reads back as the same
# string (not a boolean, null or number).
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n",
               "True", "False", "TRUE", "FALSE", "Yes", "No", "YES", "NO",
               "On", "Off", "ON", "OFF", "Null", "NULL", "Y", "N", "~"}
MAX_DIM = 1048576


class ConfigError(ValueError):
    """The configuration breaks docs/model-format.md."""


def _check_int(where, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError("%s: expected an integer, got %r" % (where, v))
    if not lo <= v <= hi:
        raise ConfigError("%s: %d is out of range [%d, %d]" % (where, v, lo, hi))


def _check_str(where, v):
    if not isinstance(v, str):
        raise ConfigError("%s: expected a string, got %r" % (where, v))
    if len(v.encode("utf-8")) > MAX_STR:
        raise ConfigError("%s: longer than %d bytes" % (where, MAX_STR))
    if "\0" in v:
        raise ConfigError("%s: contains a NUL character" % where)


def validate(cfg):
    """Checks a config dict against the schema; raises ConfigError naming
    the key. Returns cfg."""
    if not isinstance(cfg, dict):
        raise ConfigError("config: expected a mapping")
    allowed = {"format", "provenance", "architecture", "tokenizer", "chat"}
    for k in cfg:
        if k not in allowed:
            raise ConfigError("config: unknown key %r" % k)
    if cfg.get("format") != 1 or isinstance(cfg.get("format"), bool):
        raise ConfigError("format: expected 1, got %r" % cfg.get("format"))
    for section, keys in (("provenance", PROVENANCE_KEYS), ("chat", CHAT_KEYS)):
        sec = cfg.get(section)
        if sec is None:
            continue
        if not isinstance(sec, dict):
            raise ConfigError("%s: expected a mapping" % section)
        for k, v in sec.items():
            if k not in keys:
                raise ConfigError("%s: unknown key %r" % (section, k))
            _check_str("%s.%s" % (section, k), v)
    arch = cfg.get("architecture")
    if not isinstance(arch, dict):
        raise ConfigError("architecture: expected a mapping")
    for k in arch:
        if k not in ARCH_KEYS:
            raise ConfigError("architecture: unknown key %r" % k)
    for k in ARCH_KEYS:
        if k not in arch:
            raise ConfigError("architecture.%s: missing" % k)
    for k in ARCH_INT_KEYS:
        lo = 0 if k in ("ffn_dim", "truncation_length") else 1
        hi = 2 ** 31 - 1 if k in ("vocab_size", "truncation_length") else MAX_DIM
        _check_int("architecture." + k, arch[k], lo, hi)
    if arch["z_dim"] % 2:
        raise ConfigError("architecture.z_dim: %d is odd, expected even" % arch["z_dim"])
    for k, choices in ARCH_CHOICES.items():
        if arch[k] not in choices:
            raise ConfigError("architecture.%s: %r is not one of %s"
                              % (k, arch[k], ", ".join(choices)))
    for k in ARCH_BOOL_KEYS:
        if not isinstance(arch[k], bool):
            raise ConfigError("architecture.%s: expected true or false" % k)
    tok = cfg.get("tokenizer")
    if not isinstance(tok, dict):
        raise ConfigError("tokenizer: expected a mapping")
    for k in tok:
        if k not in TOKENIZER_KEYS:
            raise ConfigError("tokenizer: unknown key %r" % k)
    for k in TOKENIZER_KEYS:
        if k not in tok and k != "byte_symbols":
            raise ConfigError("tokenizer.%s: missing" % k)
    if tok["type"] not in ("fairseq", "sentencepiece"):
        raise ConfigError("tokenizer.type: %r is not fairseq or sentencepiece" % tok["type"])
    _check_str("tokenizer.file", tok["file"])
    if (not tok["file"] or "/" in tok["file"] or tok["file"] in (".", "..")):
        raise ConfigError("tokenizer.file: %r must be a plain file name" % tok["file"])
    if "byte_symbols" in tok:
        if tok["type"] != "fairseq":
            raise ConfigError("tokenizer.byte_symbols: only for fairseq dictionaries")
        if tok["byte_symbols"] not in ("auto", True, False):
            raise ConfigError("tokenizer.byte_symbols: expected auto, true or false")
    for k in ("bos_id", "eos_id", "pad_id", "unk_id"):
        _check_int("tokenizer." + k, tok[k], -1, arch["vocab_size"] - 1)
    return cfg


def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        if _PLAIN.match(v) and v not in _YAML_WORDS:
            return v
        # JSON strings (with \uXXXX escapes only for control characters)
        # are valid YAML double-quoted scalars.
        return json.dumps(v, ensure_ascii=False)
    raise TypeError("cannot write %r" % (v,))


def to_yaml(cfg):
    """Returns the config as block-style YAML text, keys in schema order."""
    validate(cfg)
    out = ["format: 1"]
    for section, keys in (("provenance", PROVENANCE_KEYS),
                          ("architecture", ARCH_KEYS),
                          ("tokenizer", TOKENIZER_KEYS),
                          ("chat", CHAT_KEYS)):
        sec = cfg.get(section)
        if sec is None:
            continue
        if not sec:
            # An empty block mapping would read back as null.
            out.append(section + ": {}")
            continue
        out.append(section + ":")
        for k in keys:
            if k in sec:
                out.append("  %s: %s" % (k, _scalar(sec[k])))
    return "\n".join(out) + "\n"


def _parse_scalar(where, text):
    if text == "{}":
        return {}
    if text in ("true", "false"):
        return text == "true"
    if text.startswith('"'):
        try:
            return json.loads(text)
        except ValueError:
            raise ConfigError("%s: bad quoted string %s" % (where, text))
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    try:
        return int(text)
    except ValueError:
        return text


def parse_simple(text, label="config.yaml"):
    """Reads the block-style subset of YAML that to_yaml writes (two levels,
    scalar values): a fallback where the yaml module is missing."""
    cfg, section = {}, None
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.rstrip()
        if not body.strip() or body.lstrip().startswith("#"):
            continue
        where = "%s:%d" % (label, lineno)
        indent = len(body) - len(body.lstrip(" "))
        key, sep, rest = body.strip().partition(":")
        if not sep:
            raise ConfigError("%s: expected 'key: value'" % where)
        rest = rest.strip()
        if not rest.startswith(("'", '"')):
            rest = rest.split(" #", 1)[0].strip()
        if indent == 0:
            if key in cfg:
                raise ConfigError("%s: duplicate key %r" % (where, key))
            if rest:
                cfg[key], section = _parse_scalar(where, rest), None
            else:
                cfg[key], section = {}, key
        else:
            if section is None:
                raise ConfigError("%s: unexpected indentation" % where)
            if key in cfg[section]:
                raise ConfigError("%s: duplicate key %r" % (where, key))
            cfg[section][key] = _parse_scalar(where, rest)
    return cfg


def load(path):
    """Reads and validates a model directory's config.yaml."""
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        return validate(parse_simple(text, path))
    return validate(yaml.safe_load(text))


def default_tokenizer_fairseq():
    """The tokenizer section of a converted fairseq model."""
    return {"type": "fairseq", "file": "dict.txt", "byte_symbols": "auto",
            "bos_id": 2, "eos_id": 2, "pad_id": 1, "unk_id": 3}


def embed_scale(arch):
    return math.sqrt(arch["embed_dim"]) if arch["scale_embedding"] else 1.0
