"""Reading an official SeqBoat checkpoint (docs/computation.md section 8) safely.

A checkpoint is a pickle, and unpickling may call any importable function.
On torch >= 2.4 it is loaded with torch.load(weights_only=True) and
argparse.Namespace added to torch's safe globals. Elsewhere (torch 1.13,
whose weights_only cannot admit Namespace and whose torch.load ignores a
custom pickle_module) and as a fallback, this module reads the archive
itself: its own Unpickler admits only tensor rebuilding, containers,
argparse.Namespace and numpy scalars, and builds tensors from the archive's
raw storage records. Either way a checkpoint cannot run code of its choosing.
"""

import argparse
import collections
import importlib
import io
import pickle
import struct
import sys
import zipfile

import numpy as np
import torch

from . import config as cfgmod


class CheckpointError(ValueError):
    """The checkpoint is unreadable or describes a model seqboat cannot run.
    `status` is the exit status a command should use (65 bad data)."""

    def __init__(self, msg, status=65):
        super().__init__(msg)
        self.status = status


# ---------------------------------------------------------------- reading

# Storage class name -> (torch dtype, numpy dtype of the raw bytes).
_STORAGE_DTYPES = {
    "DoubleStorage": (torch.float64, "<f8"),
    "FloatStorage": (torch.float32, "<f4"),
    "HalfStorage": (torch.float16, "<f2"),
    "BFloat16Storage": (torch.bfloat16, "<i2"),
    "LongStorage": (torch.int64, "<i8"),
    "IntStorage": (torch.int32, "<i4"),
    "ShortStorage": (torch.int16, "<i2"),
    "CharStorage": (torch.int8, "i1"),
    "ByteStorage": (torch.uint8, "u1"),
    "BoolStorage": (torch.bool, "u1"),
    "UntypedStorage": (torch.uint8, "u1"),
}


class _StorageType(object):
    """Stands for a torch storage class named in the pickle: only its dtype
    is used. Calling it (a pickle trying to construct one) is refused."""

    def __init__(self, name):
        self.name = name
        self.dtype, self.npdtype = _STORAGE_DTYPES[name]

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to construct torch.%s directly" % self.name)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError("tensor size and stride differ in length")
    end = int(storage_offset)
    for n, st in zip(size, stride):
        if n < 0 or st < 0:
            raise pickle.UnpicklingError("negative tensor size or stride")
        if n == 0:
            end = int(storage_offset)
            break
        end += (n - 1) * st
    if any(n == 0 for n in size):
        return torch.empty(size, dtype=storage.dtype)
    if storage_offset < 0 or end >= storage.numel():
        raise pickle.UnpicklingError("tensor reaches past the end of its storage")
    return storage.as_strided(size, stride, int(storage_offset))


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise pickle.UnpicklingError("unexpected tensor rebuild function")
    return func(*args)


class _Marker(object):
    """An allowed global that must never be called (Parameter as a type tag)."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call %s" % self.name)


def _allowed_global(module, name):
    """Returns what a pickle may reference as module.name, or None."""
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "argparse" and name == "Namespace":
        return argparse.Namespace
    if module in ("builtins", "__builtin__") and name in (
            "set", "frozenset", "complex", "slice", "bytearray"):
        return getattr(__import__("builtins"), name)
    if module == "torch._utils":
        if name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module == "torch.nn.parameter" and name == "Parameter":
        return _Marker("torch.nn.parameter.Parameter")
    if module == "torch" and name == "Tensor":
        return _Marker("torch.Tensor")
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
        return _StorageType(name)
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            return obj
        if name in ("Size", "device"):
            return obj
    # numpy scalars and arrays appear in fairseq's bookkeeping (meters);
    # rebuilding them only copies bytes.
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "scalar", "_reconstruct"):
        for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        return None
    if module == "numpy" and name in ("dtype", "ndarray"):
        return getattr(np, name)
    return None


class _Unpickler(pickle.Unpickler):
    """Unpickles a torch archive's data.pkl: globals through the allow-list,
    persistent ids (storages) through `load_storage`."""

    def __init__(self, file, load_storage):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module, name):
        obj = _allowed_global(module, name)
        if obj is None:
            raise pickle.UnpicklingError(
                "refusing to unpickle global '%s.%s' (not a tensor, container "
                "or argparse.Namespace)" % (module, name))
        return obj

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError("unexpected persistent id %r" % (pid[:1],))
        return self._load_storage(pid)


def _storage_tensor(raw, stype, little=True):
    a = np.frombuffer(raw, dtype=np.dtype(stype.npdtype).newbyteorder("<" if little else ">"))
    t = torch.from_numpy(a.astype(np.dtype(stype.npdtype), copy=True))
    if stype.dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    elif stype.dtype == torch.bool:
        t = t.bool()
    return t


def _load_zip(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointError("%s: a torch zip archive has one data.pkl, found %d"
                                  % (path, len(pkl)))
        prefix = pkl[0][:-len("data.pkl")]
        little = True
        if prefix + "byteorder" in names:
            little = z.read(prefix + "byteorder").strip() != b"big"
        cache = {}

        def load_storage(pid):
            stype, key = pid[1], str(pid[2])
            if key not in cache:
                rec = prefix + "data/" + key
                if rec not in names:
                    raise pickle.UnpicklingError("storage record %r is missing" % rec)
                raw = z.read(rec)
                width = np.dtype(stype.npdtype).itemsize
                if len(raw) % width:
                    raise pickle.UnpicklingError("storage %r has a partial element" % key)
                cache[key] = _storage_tensor(raw, stype, little)
            t = cache[key]
            if t.dtype != stype.dtype:
                raise pickle.UnpicklingError("storage %r is used with two dtypes" % key)
            return t

        return _Unpickler(io.BytesIO(z.read(pkl[0])), load_storage).load()


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _load_legacy(path):
    """torch < 1.6's format: magic, protocol, system info and object
    pickles, the list of storage keys, then each storage's raw bytes."""
    with open(path, "rb") as f:
        def plain():
            return _Unpickler(f, None).load()

        if plain() != _LEGACY_MAGIC:
            raise CheckpointError("%s: neither a zip archive nor a legacy torch file" % path)
        plain()  # protocol version
        sysinfo = plain()
        little = not isinstance(sysinfo, dict) or sysinfo.get("little_endian", True)
        wanted = {}

        def load_storage(pid):
            # ('storage', type, key, location, numel[, view metadata])
            stype, key = pid[1], str(pid[2])
            if len(pid) > 5 and pid[5] is not None:
                raise pickle.UnpicklingError("legacy storage views are not supported")
            t = wanted.get(key)
            if t is None:
                t = torch.empty(int(pid[4]), dtype=stype.dtype)
                wanted[key] = t
            return t

        obj = _Unpickler(f, load_storage).load()
        keys = plain()
        for key in keys:
            key = str(key)
            (n,) = struct.unpack("<q" if little else ">q", f.read(8))
            t = wanted.get(key)
            if t is None or n != t.numel():
                raise CheckpointError("%s: storage %r has %d elements, expected %s"
                                      % (path, key, n, None if t is None else t.numel()))
            width = t.element_size()
            raw = f.read(n * width)
            if len(raw) != n * width:
                raise CheckpointError("%s: storage %r is truncated" % (path, key))
            stype = _StorageType(next(k for k, v in _STORAGE_DTYPES.items() if v[0] == t.dtype))
            t.copy_(_storage_tensor(raw, stype, little))
        return obj


def load_restricted(path):
    """Reads a torch checkpoint with this module's own allow-list reader."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def _torch_version():
    try:
        return tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    except ValueError:
        return (0, 0)


def safe_load(path):
    """Loads a checkpoint file without letting it run code. Raises
    CheckpointError (status 65) when it cannot be read or references a
    global outside the allow-list, OSError when it cannot be opened."""
    ser = torch.serialization
    first_error = None
    with open(path, "rb"):
        pass  # an unreadable file is an I/O error, not bad data
    if _torch_version() >= (2, 4) and hasattr(ser, "safe_globals"):
        try:
            with ser.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            # torch's allow-list lacks what ours admits (numpy meters in
            # fairseq's bookkeeping): retry with ours, as strict about code.
            first_error = e
    try:
        return load_restricted(path)
    except CheckpointError:
        raise
    except Exception as e:
        text = str(e).strip()
        msg = text.splitlines()[0] if text else type(e).__name__
        if first_error is not None:
            first = str(first_error).strip()
            msg += " (weights_only load: %s)" % (first.splitlines()[-1] if first else
                                                 type(first_error).__name__)
        raise CheckpointError("%s: cannot load safely: %s" % (path, msg))


# ---------------------------------------------------------------- validation

# Official options seqboat does not implement: (argument, bad-value test,
# what to say).
_REFUSED = (
    ("local_pos", lambda v: bool(v), "local_pos is true"),
    ("adaptive_input", lambda v: bool(v), "adaptive_input is true"),
    ("adaptive_softmax_cutoff", lambda v: v not in (None, "", 0, False),
     "adaptive_softmax_cutoff is set"),
    ("normalize_embedding", lambda v: bool(v), "normalize_embedding is true"),
    ("tie_adaptive_weights", lambda v: bool(v), "tie_adaptive_weights is true"),
)

_REQUIRED_INT = (
    ("decoder_embed_dim", "embed_dim", 1),
    ("decoder_z_dim", "z_dim", 1),
    ("decoder_hidden_dim", "hidden_dim", 1),
    ("decoder_n_dim", "n_dim", 1),
    ("decoder_layers", "layers", 1),
    ("decoder_chunk_size", "window", 1),
)


def args_to_architecture(args, label="checkpoint"):
    """Maps the official argument namespace to the `architecture` section of
    config.yaml (without vocab_size). Raises CheckpointError naming the
    argument when an option is unsupported or out of range."""
    if isinstance(args, argparse.Namespace):
        a = vars(args)
    elif isinstance(args, dict):
        a = args
    else:
        raise CheckpointError("%s: 'args' is %s, expected an argparse.Namespace"
                              % (label, type(args).__name__))

    def bad(msg):
        raise CheckpointError("%s: args.%s" % (label, msg))

    for key, test, what in _REFUSED:
        if key in a and test(a[key]):
            bad("%s: seqboat does not support %s" % (key, what))

    arch = {}
    for key, name, lo in _REQUIRED_INT:
        v = a.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            bad("%s: expected an integer, got %r" % (key, v))
        if v < lo or v > cfgmod.MAX_DIM:
            bad("%s: %d is out of range [%d, %d]" % (key, v, lo, cfgmod.MAX_DIM))
        arch[name] = v
    if arch["z_dim"] % 2:
        bad("decoder_z_dim: %d is odd; rotary pairs need an even width" % arch["z_dim"])
    din = a.get("decoder_input_dim", arch["embed_dim"])
    if din is not None and din != arch["embed_dim"]:
        bad("decoder_input_dim: %r differs from decoder_embed_dim %d "
            "(an input projection seqboat does not implement)" % (din, arch["embed_dim"]))

    ffn = a.get("decoder_ffn_embed_dim", 0)
    if ffn is None:
        ffn = 0
    if isinstance(ffn, bool) or not isinstance(ffn, int):
        bad("decoder_ffn_embed_dim: expected an integer, got %r" % (ffn,))
    if ffn > cfgmod.MAX_DIM:
        bad("decoder_ffn_embed_dim: %d is larger than %d" % (ffn, cfgmod.MAX_DIM))
    arch["ffn_dim"] = max(ffn, 0)

    m = a.get("max_target_positions")
    if m is None:
        m = 1024  # what the official build_model substitutes
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= cfgmod.MAX_DIM:
        bad("max_target_positions: expected an integer in [1, %d], got %r" % (cfgmod.MAX_DIM, m))
    arch["max_positions"] = m

    t = a.get("truncation_length")
    if t is None:
        t = 0
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 2 ** 31 - 1:
        bad("truncation_length: expected a non-negative integer, got %r" % (t,))
    arch["truncation_length"] = t

    for key, name, default in (("rel_pos_bias", "rel_pos_bias", "simple"),
                               ("attention_activation_fn", "attention", None),
                               ("normalization_type", "norm", None),
                               ("activation_fn", "activation", "silu")):
        v = a.get(key, default)
        if v is None:
            bad("%s: missing" % key)
        if v not in cfgmod.ARCH_CHOICES[name]:
            bad("%s: seqboat does not support %r (expected one of %s)"
                % (key, v, ", ".join(cfgmod.ARCH_CHOICES[name])))
        arch[name] = v

    for key, name, invert in (("normalize_before", "normalize_before", False),
                              ("no_affine_final_norm", "affine_final_norm", True),
                              ("no_scale_embedding", "scale_embedding", True),
                              ("share_decoder_input_output_embed", "tied_embeddings", False)):
        v = a.get(key, False)
        if v is None:
            v = False
        if not isinstance(v, bool):
            bad("%s: expected true or false, got %r" % (key, v))
        arch[name] = (not v) if invert else v
    return arch


def norm_param_shapes(prefix, norm, D, affine=True):
    """Parameters of one SequenceNorm under `prefix` (e.g. 'final_norm')."""
    if not affine:
        return {}
    p = prefix + ".norm."
    if norm == "layernorm":
        return {p + "weight": (D,), p + "bias": (D,)}
    if norm == "scalenorm":
        return {p + "scalar": (1,)}
    return {p + "weight": (D,)}


def expected_shapes(arch):
    """Tensor name -> shape for a model (docs/computation.md section 5, 'decoder.' dropped;
    output_projection.weight only when untied)."""
    V, D, Z, H, N = (arch[k] for k in ("vocab_size", "embed_dim", "z_dim",
                                        "hidden_dim", "n_dim"))
    F, M, norm = arch["ffn_dim"], arch["max_positions"], arch["norm"]
    s = {"embed_tokens.weight": (V, D)}
    if not arch["tied_embeddings"]:
        s["output_projection.weight"] = (V, D)
    if arch["normalize_before"]:
        s.update(norm_param_shapes("final_norm", norm, D, arch["affine_final_norm"]))
    for l in range(arch["layers"]):
        b = "layers.%d.slag_layer." % l
        s.update(norm_param_shapes(b + "norm", norm, D))
        s[b + "move.delta"] = (D, N, 1)
        s[b + "move.alpha"] = (D, N, 1)
        s[b + "move.beta"] = (D, N, 1)
        s[b + "move.gamma"] = (D, N)
        s[b + "move.omega"] = (D,)
        s[b + "q_router.temp"] = (1,)
        s[b + "hx_proj.weight"] = (2 + D, D)
        s[b + "hx_proj.bias"] = (2 + D,)
        s[b + "mx_proj.weight"] = (Z + 2 * H, D)
        s[b + "mx_proj.bias"] = (Z + 2 * H,)
        s[b + "h_proj.weight"] = (D, H)
        s[b + "h_proj.bias"] = (D,)
        s[b + "gamma"] = (2, Z)
        s[b + "beta"] = (2, Z)
        if arch["rel_pos_bias"] == "simple":
            s[b + "rel_pos_bias.rel_pos_bias"] = (2 * M - 1,)
        if F > 0:
            f = "layers.%d.nffn." % l
            s[f + "fc1.weight"] = (F, D)
            s[f + "fc1.bias"] = (F,)
            s[f + "fc2.weight"] = (D, F)
            s[f + "fc2.bias"] = (D,)
            s.update(norm_param_shapes(f + "norm", norm, D))
    return s


def extract(ckpt, label="checkpoint"):
    """From a loaded official checkpoint, returns (architecture dict with
    vocab_size, ordered dict of float32 tensors named as docs/computation.md section 5).
    The 'decoder.' prefix and the 'version' buffer are dropped; a tied
    output projection is dropped after checking it is the embedding.
    Unknown, missing or misshapen tensors raise CheckpointError."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError("%s: expected a dict with 'args' and 'model', found %s"
                              % (label, keys))
    arch = args_to_architecture(ckpt["args"], label)
    sd = ckpt["model"]
    if not isinstance(sd, dict):
        raise CheckpointError("%s: 'model' is not a state dict" % label)
    tensors = collections.OrderedDict()
    for k, v in sd.items():
        if not isinstance(k, str) or not k.startswith("decoder."):
            raise CheckpointError("%s: model tensor %r lacks the 'decoder.' prefix" % (label, k))
        if not torch.is_tensor(v):
            raise CheckpointError("%s: model entry %r is not a tensor" % (label, k))
        name = k[len("decoder."):]
        if name == "version":
            continue
        tensors[name] = v
    emb = tensors.get("embed_tokens.weight")
    if emb is None or emb.dim() != 2:
        raise CheckpointError("%s: missing the 2-D tensor 'decoder.embed_tokens.weight'" % label)
    arch = dict(arch, vocab_size=int(emb.shape[0]))
    if emb.shape[1] != arch["embed_dim"]:
        raise CheckpointError("%s: 'decoder.embed_tokens.weight' has shape %s, expected [%d, %d]"
                              % (label, list(emb.shape), emb.shape[0], arch["embed_dim"]))
    if arch["tied_embeddings"] and "output_projection.weight" in tensors:
        out = tensors.pop("output_projection.weight")
        if out.shape != emb.shape or not torch.equal(out, emb):
            raise CheckpointError("%s: share_decoder_input_output_embed is true but "
                                  "'decoder.output_projection.weight' differs from "
                                  "'decoder.embed_tokens.weight'" % label)
    want = expected_shapes(arch)
    for name, t in tensors.items():
        if name not in want:
            raise CheckpointError("%s: unexpected tensor 'decoder.%s' for this "
                                  "configuration" % (label, name))
        if tuple(t.shape) != want[name]:
            raise CheckpointError("%s: tensor 'decoder.%s' has shape %s, expected %s"
                                  % (label, name, list(t.shape), list(want[name])))
        if not t.is_floating_point():
            raise CheckpointError("%s: tensor 'decoder.%s' is %s, expected floating point"
                                  % (label, name, t.dtype))
    for name in want:
        if name not in tensors:
            raise CheckpointError("%s: missing tensor 'decoder.%s'" % (label, name))
    ordered = collections.OrderedDict((n, tensors[n].detach().float().contiguous())
                                      for n in want)
    return arch, ordered


def read_dict(path):
    """Counts the symbols of a fairseq dict.txt (lines 'symbol count',
    possibly with a trailing '#fairseq:overwrite' flag). Returns the
    vocabulary size it implies: 4 special symbols + one per line."""
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError:
                raise CheckpointError("%s:%d: not valid UTF-8" % (path, lineno))
            if not line.strip():
                continue
            parts = line.rsplit(" ", 2)
            if len(parts) == 3 and parts[2] == "#fairseq:overwrite":
                parts = parts[:2]
            else:
                parts = line.rsplit(" ", 1)
            if len(parts) != 2 or not parts[0]:
                raise CheckpointError("%s:%d: expected 'symbol count'" % (path, lineno))
            try:
                int(parts[1])
            except ValueError:
                raise CheckpointError("%s:%d: count %r is not an integer"
                                      % (path, lineno, parts[1]))
            n += 1
    return 4 + n
