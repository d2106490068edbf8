#!/usr/bin/python3
"""Converts an official SeqBoat checkpoint into a seqboat model directory.

    convert_fairseq.py CHECKPOINT.pt DICT.txt -o OUTDIR [--dtype f32|f16|bf16]
                       [--name NAME] [--license TEXT] [--force]

OUTDIR receives config.yaml (docs/model-format.md), model.safetensors
(tensors named as docs/computation.md section 5, 'decoder.' dropped, shapes as in the
checkpoint) and dict.txt. The checkpoint is unpickled through an allow-list,
so it cannot run code. Nothing is written unless the whole conversion
succeeds: the files are assembled in a temporary directory next to OUTDIR
and renamed into place.

Exit status: 0 done, 2 usage, 65 bad or unsupported checkpoint, 74 I/O.
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from seqboat_torch import checkpoint as ckmod  # noqa: E402
from seqboat_torch import config as cfgmod  # noqa: E402
from seqboat_torch import safetensors_io  # noqa: E402

EX_USAGE, EX_DATAERR, EX_IOERR = 2, 65, 74
DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def fail(status, msg):
    sys.stderr.write("convert_fairseq: %s\n" % msg)
    sys.exit(status)


def build_config(arch, checkpoint_path, name, license_text):
    prov = {"source": "converted from %s by tools/convert_fairseq.py"
            % os.path.basename(checkpoint_path)}
    if name:
        prov["name"] = name
    if license_text:
        prov["license"] = license_text
    order = ("vocab_size",) + tuple(k for k in cfgmod.ARCH_KEYS if k != "vocab_size")
    return {"format": 1, "provenance": prov,
            "architecture": {k: arch[k] for k in order},
            "tokenizer": cfgmod.default_tokenizer_fairseq()}


def write_model_dir(tmpdir, cfg, tensors, dtype, dict_path):
    with open(os.path.join(tmpdir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(cfgmod.to_yaml(cfg))
    safetensors_io.write(os.path.join(tmpdir, "model.safetensors"), tensors,
                         dtypes=dtype,
                         metadata={"format": "pt", "source": cfg["provenance"]["source"]})
    shutil.copyfile(dict_path, os.path.join(tmpdir, "dict.txt"))


def install(tmpdir, outdir, force):
    """Moves the finished tmpdir to outdir. An existing outdir (only with
    --force, or when empty) is moved aside first and removed after."""
    old = None
    if os.path.lexists(outdir):
        old = outdir + ".old-%d" % os.getpid()
        os.rename(outdir, old)
    try:
        os.rename(tmpdir, outdir)
    except OSError:
        if old is not None:
            os.rename(old, outdir)
        raise
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old)
        else:
            os.unlink(old)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="convert_fairseq.py",
        description="Convert an official SeqBoat checkpoint to a seqboat model directory.")
    ap.add_argument("checkpoint", help="checkpoint .pt saved by the official trainer")
    ap.add_argument("dictionary", help="the fairseq dict.txt of the checkpoint")
    ap.add_argument("-o", "--output", required=True, help="model directory to create")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32",
                    help="weight type in model.safetensors (default f32)")
    ap.add_argument("--name", help="provenance name recorded in config.yaml")
    ap.add_argument("--license", help="provenance license recorded in config.yaml")
    ap.add_argument("--force", action="store_true",
                    help="replace OUTDIR when it exists and is not empty")
    a = ap.parse_args(argv)

    outdir = os.path.normpath(a.output)
    if os.path.lexists(outdir):
        if not os.path.isdir(outdir) or os.path.islink(outdir):
            if not a.force:
                fail(EX_USAGE, "%s: exists and is not a directory (use --force to replace it)" % outdir)
        elif os.listdir(outdir) and not a.force:
            fail(EX_USAGE, "%s: directory exists and is not empty (use --force to replace it)" % outdir)
    for s in (a.name, a.license):
        if s is not None and len(s.encode("utf-8")) > cfgmod.MAX_STR:
            fail(EX_USAGE, "--name/--license: longer than %d bytes" % cfgmod.MAX_STR)

    try:
        ckpt = ckmod.safe_load(a.checkpoint)
        arch, tensors = ckmod.extract(ckpt, a.checkpoint)
        del ckpt
        nsym = ckmod.read_dict(a.dictionary)
    except ckmod.CheckpointError as e:
        fail(e.status, str(e))
    except OSError as e:
        fail(EX_IOERR, "%s: %s" % (e.filename or a.checkpoint, e.strerror or e))
    if nsym > arch["vocab_size"]:
        fail(EX_DATAERR, "%s: %d symbols (4 special + %d lines) but the embedding has "
             "only %d rows" % (a.dictionary, nsym, nsym - 4, arch["vocab_size"]))
    cfg = build_config(arch, a.checkpoint, a.name, a.license)
    try:
        cfgmod.validate(cfg)
    except cfgmod.ConfigError as e:
        fail(EX_DATAERR, "%s: %s" % (a.checkpoint, e))

    parent = os.path.dirname(os.path.abspath(outdir))
    tmpdir = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmpdir = tempfile.mkdtemp(prefix=".convert-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmpdir, 0o777 & ~umask)
        write_model_dir(tmpdir, cfg, tensors, DTYPES[a.dtype], a.dictionary)
        install(tmpdir, outdir, a.force)
        tmpdir = None
    except OSError as e:
        fail(EX_IOERR, "%s: %s" % (e.filename or outdir, e.strerror or e))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
