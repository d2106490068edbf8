#!/usr/bin/python3
"""The C engine against our PyTorch model on every variant of docs/computation.md section 6
that the official fixtures do not cover: each random model is exported to a
model directory and `seqboat logits` (decode, prefill and split modes) must
give the PyTorch logits within 1e-4 and the same router decisions. The
PyTorch model itself is checked against the official fixtures and against
its own recurrence in test_torch_parity.py."""

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

TOL = 1e-4

VARIANTS = {
    "scalenorm_postnorm_ffn": (dict(norm="scalenorm", normalize_before=False, ffn_dim=40), 60),
    "rmsnorm_relu2_untied_unscaled": (dict(norm="rmsnorm", attention="relu2",
                                           tied_embeddings=False, scale_embedding=False), 60),
    "laplace_simple": (dict(attention="laplace", rel_pos_bias="simple", max_positions=16), 60),
    "softmax_simple_clamped": (dict(rel_pos_bias="simple", max_positions=8, window=12), 80),
    "window4_4layers_long": (dict(window=4, layers=4), 400),
    "gelu_no_affine_final_norm_ffn": (dict(activation="gelu", affine_final_norm=False,
                                           ffn_dim=20), 50),
    "relu_rmsnorm_no_affine": (dict(activation="relu", norm="rmsnorm",
                                    affine_final_norm=False), 50),
    "layernorm_postnorm_relu2_ffn": (dict(normalize_before=False, attention="relu2",
                                          ffn_dim=24), 60),
    "window1": (dict(window=1, layers=1), 50),
    "scalenorm_prenorm_no_affine": (dict(norm="scalenorm", affine_final_norm=False), 50),
    # Windows of 64 and more take the prefill path that computes a block's
    # attention as matrix products over the ring: wrap it several times.
    "window64_softmax_rotary_long": (dict(window=64), 700),
    "window100_relu2_simple_long": (dict(window=100, attention="relu2", rel_pos_bias="simple",
                                         max_positions=40), 600),
    "window70_laplace_postnorm_long": (dict(window=70, attention="laplace",
                                            normalize_before=False, ffn_dim=16), 500),
    # Rings of 128 entries and more are split over threads when decoding.
    "window200_softmax_long": (dict(window=200), 700),
    "window150_relu2_simple_long": (dict(window=150, attention="relu2", rel_pos_bias="simple",
                                         max_positions=300), 600),
}


class Variants(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="sb-variants-")
        cls.dict_path = os.path.join(cls.tmp.name, "dict.txt")
        with open(cls.dict_path, "w") as f:
            for i in range(46):
                f.write("w%d %d\n" % (i, 100 - i))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_variant(self, name, overrides, T, seed):
        arch = base_arch(**overrides)
        m = random_model(arch, seed)
        with torch.no_grad():
            # Queries and keys large enough that the attention weights depend
            # on the scores (a scale or bias error must show in the logits).
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
        self.assertGreater((2 * pr1 - 1).abs().min().item(), 1e-4,
                           "%s: a router decision is too close to a tie to compare" % name)
        frac = want_act.mean()
        self.assertTrue(0.05 < frac < 0.95, "%s: routers fire on %.2f of tokens" % (name, frac))
        ids = " ".join(str(int(t)) for t in tokens)
        # Three threads, so that the threaded paths run on any machine.
        for mode in (["-t", "3"], ["--prefill"], ["--split", str(T // 3), "-t", "3"]):
            out = os.path.join(self.tmp.name, name + ".st")
            r = subprocess.run([SEQBOAT, "logits", "-m", outdir, "--ids", ids, "-o", out] + mode,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            got, _, _ = safetensors_io.read(out)
            diff = abs(got["logits"] - want).max()
            self.assertLessEqual(diff, TOL, "%s %s: logits differ by %g" % (name, mode, diff))
            self.assertTrue((got["act"] == want_act).all(), "%s %s: act bits differ" % (name, mode))


def _make(name, overrides, T, seed):
    def test(self):
        self.run_variant(name, overrides, T, seed)
    return test


for i, (name, (overrides, T)) in enumerate(sorted(VARIANTS.items())):
    setattr(Variants, "test_variant_" + name, _make(name, overrides, T, 100 + i))


if __name__ == "__main__":
    unittest.main(verbosity=2)
