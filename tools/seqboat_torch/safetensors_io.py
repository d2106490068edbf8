"""Reading and writing safetensors files without the safetensors package.

A safetensors file is an 8-byte little-endian header length, a JSON header
(padded with spaces to a multiple of 8 bytes) mapping each tensor name to
its dtype, shape and [begin, end) byte range in the data that follows, and
the raw little-endian tensor data.
"""

import json
import os
import struct

import numpy as np

# dtype name -> (numpy dtype of the stored elements, bytes per element)
_DTYPES = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),   # no numpy bfloat16: kept as raw bits
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("u1"), 1),
}

# Header sizes beyond this are refused: a corrupt length must not make the
# reader allocate gigabytes.
_MAX_HEADER = 100 * 1024 * 1024


class FormatError(ValueError):
    """The file is not a valid safetensors file."""


def f32_to_bf16_bits(a):
    """Rounds float32 values to bfloat16 (nearest, ties to even), as raw
    uint16 bits. NaNs stay NaN (quiet) instead of rounding into infinity."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def bf16_bits_to_f32(bits):
    """Widens raw bfloat16 bits to float32 (exact)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _to_numpy(t):
    """Accepts a numpy array or a torch tensor (any device, any float type)."""
    if isinstance(t, np.ndarray):
        return t
    import torch  # only when torch tensors are given
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def encode(array, dtype):
    """Returns the little-endian bytes of `array` stored as `dtype`
    ("F32", "F16", "BF16", "I32", "U8", ...). Floats are rounded to nearest,
    ties to even, when narrowed."""
    a = _to_numpy(array)
    if dtype == "BF16":
        if a.dtype == np.uint16:
            raise TypeError("BF16 from uint16 is ambiguous; pass floats")
        return f32_to_bf16_bits(a.astype(np.float32)).astype("<u2").tobytes()
    if dtype not in _DTYPES:
        raise ValueError("unsupported safetensors dtype %r" % dtype)
    npd = _DTYPES[dtype][0]
    if dtype == "BOOL":
        a = a.astype(bool)
    return np.ascontiguousarray(a.astype(npd)).tobytes()


def write(path, tensors, dtypes=None, metadata=None):
    """Writes `tensors` (an ordered mapping name -> numpy array or torch
    tensor) to `path`. `dtypes` maps a name to its stored dtype, or is one
    dtype name for all floating tensors; by default floats are F32 and
    integer arrays keep their width. The file is written to a temporary
    name, flushed and renamed, so readers never see half a file."""
    header = {}
    chunks = []
    offset = 0
    for name, t in tensors.items():
        a = _to_numpy(t)
        if isinstance(dtypes, dict) and name in dtypes:
            dt = dtypes[name]
        elif a.dtype.kind == "f":
            dt = dtypes if isinstance(dtypes, str) else "F32"
        else:
            dt = {np.dtype("int64"): "I64", np.dtype("int32"): "I32",
                  np.dtype("int16"): "I16", np.dtype("int8"): "I8",
                  np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}.get(a.dtype)
            if dt is None:
                raise TypeError("tensor %r has unsupported dtype %s" % (name, a.dtype))
        data = encode(a, dt)
        header[name] = {"dtype": dt, "shape": [int(s) for s in a.shape],
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hjson)))
            f.write(hjson)
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise FormatError("%s: shorter than the 8-byte header length" % path)
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise FormatError("%s: header length %d is too large" % (path, n))
        h = f.read(n)
        if len(h) != n:
            raise FormatError("%s: header truncated" % path)
    try:
        header = json.loads(h.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError("%s: header is not JSON: %s" % (path, e))
    if not isinstance(header, dict):
        raise FormatError("%s: header is not a JSON object" % path)
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, 8 + n


def read(path, widen=True):
    """Reads every tensor of a safetensors file. Returns (tensors, dtypes,
    metadata): numpy arrays by name, stored dtype names by name, and the
    metadata mapping. With `widen`, F16 and BF16 tensors come back as exact
    float32; otherwise BF16 comes back as its raw uint16 bits."""
    header, meta, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    tensors, dtypes = {}, {}
    for name, ent in header.items():
        try:
            dt = ent["dtype"]
            shape = [int(s) for s in ent["shape"]]
            b, e = (int(x) for x in ent["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError("%s: tensor %r has a malformed header entry" % (path, name))
        if dt not in _DTYPES:
            raise FormatError("%s: tensor %r has unsupported dtype %r" % (path, name, dt))
        npd, width = _DTYPES[dt]
        count = 1
        for s in shape:
            if s < 0:
                raise FormatError("%s: tensor %r has a negative dimension" % (path, name))
            count *= s
        if not (0 <= b <= e <= len(data)) or e - b != count * width:
            raise FormatError("%s: tensor %r: data_offsets [%d, %d] do not match "
                              "shape %s of %s in %d data bytes"
                              % (path, name, b, e, shape, dt, len(data)))
        a = np.frombuffer(data[b:e], dtype=npd).reshape(shape)
        if dt == "BOOL":
            a = a.astype(bool)
        elif widen and dt == "BF16":
            a = bf16_bits_to_f32(a).reshape(shape)
        elif widen and dt == "F16":
            a = a.astype(np.float32)
        else:
            a = a.copy()
        tensors[name] = a
        dtypes[name] = dt
    return tensors, dtypes, meta
