#!/usr/bin/python3
"""The CUDA backend on every variant test_variants.py runs on the CPU: each
random model is exported, and `seqboat logits --device cuda` in decode,
prefill and split modes must give the PyTorch logits and the CPU engine's
within 1e-3 of the row's largest logit, and the same router decisions
(every PyTorch margin here exceeds 1e-4). Skipped where no GPU can be used,
unless SB_CUDA_REQUIRED=1 (scripts/gpu-check sets it)."""

import os
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(HERE, ".."))
BUILDDIR = os.environ.get("SB_BUILDDIR", os.path.join(SRCDIR, "build"))
SEQBOAT = os.environ.get("SB_SEQBOAT", os.path.join(BUILDDIR, "seqboat"))
sys.path.insert(0, os.path.join(SRCDIR, "tools"))
sys.path.insert(0, HERE)

from seqboat_torch import export as E  # noqa: E402
from seqboat_torch import safetensors_io  # noqa: E402
from test_torch_parity import base_arch, random_model  # noqa: E402
from test_variants import VARIANTS  # noqa: E402

REL_TOL = 1e-3


def rel_diff(got, want):
    big = abs(want).max(axis=1).clip(min=1e-30)
    return float((abs(got - want).max(axis=1) / big).max())


class CudaVariants(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="sb-cuda-variants-")
        cls.dict_path = os.path.join(cls.tmp.name, "dict.txt")
        with open(cls.dict_path, "w") as f:
            for i in range(46):
                f.write("w%d %d\n" % (i, 100 - i))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def logits(self, outdir, ids, mode, device, name):
        out = os.path.join(self.tmp.name, "%s-%s.st" % (name, device))
        r = subprocess.run([SEQBOAT, "logits", "-m", outdir, "--ids", ids, "-o", out,
                            "--device", device] + mode,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        if r.returncode != 0 and device == "cuda" and "cuda" in r.stderr \
                and os.environ.get("SB_CUDA_REQUIRED") != "1":
            raise unittest.SkipTest("no usable GPU: " + r.stderr.strip())
        self.assertEqual(r.returncode, 0, r.stderr)
        got, _, _ = safetensors_io.read(out)
        return got

    def run_variant(self, name, overrides, T, seed):
        arch = base_arch(**overrides)
        m = random_model(arch, seed)
        with torch.no_grad():
            for layer in m.layers:
                layer.slag_layer.gamma.normal_(0.0, 1.5)
                layer.slag_layer.beta.normal_(0.0, 0.5)
                rp = getattr(layer.slag_layer, "rel_pos_bias", None)
                if isinstance(rp, torch.nn.Module):
                    rp.rel_pos_bias.normal_(0.0, 1.0)
        outdir = os.path.join(self.tmp.name, name)
        tok = {"type": "fairseq", "file": "dict.txt", "bos_id": 2, "eos_id": 2, "pad_id": 1,
               "unk_id": 3}
        E.export(m, arch, outdir, tok, self.dict_path)
        g = torch.Generator().manual_seed(seed + 7)
        tokens = torch.randint(0, arch["vocab_size"], (T,), generator=g)
        with torch.no_grad():
            logits, extra = m(tokens[None], return_router=True)
        want = logits[0].numpy()
        want_act = torch.stack(extra["act"])[:, 0].to(torch.uint8).numpy()
        pr1 = torch.stack(extra["pr1"])[:, 0]
        self.assertGreater((2 * pr1 - 1).abs().min().item(), 1e-4)
        ids = " ".join(str(int(t)) for t in tokens)
        for mode in ([], ["--prefill"], ["--split", str(T // 3)]):
            got = self.logits(outdir, ids, mode, "cuda", name)
            cpu = self.logits(outdir, ids, mode, "cpu", name)
            d_torch = rel_diff(got["logits"], want)
            d_cpu = rel_diff(got["logits"], cpu["logits"])
            print("%s %s: vs torch %.2g, vs cpu %.2g" % (name, mode or ["decode"], d_torch, d_cpu),
                  file=sys.stderr)
            self.assertLessEqual(d_torch, REL_TOL, "%s %s: vs torch %g" % (name, mode, d_torch))
            self.assertLessEqual(d_cpu, REL_TOL, "%s %s: vs cpu %g" % (name, mode, d_cpu))
            self.assertTrue((got["act"] == want_act).all(), "%s %s: act bits differ" % (name, mode))


def _make(name, overrides, T, seed):
    def test(self):
        self.run_variant(name, overrides, T, seed)
    return test


for i, (name, (overrides, T)) in enumerate(sorted(VARIANTS.items())):
    setattr(CudaVariants, "test_cuda_variant_" + name, _make(name, overrides, T, 100 + i))


if __name__ == "__main__":
    unittest.main(verbosity=2)
