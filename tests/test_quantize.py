#!/usr/bin/python3
"""`seqboat quantize` on the converted fixture models: the stored values are
the rounding the format promises (checked with numpy, independently of the
C code), vectors are untouched, the result loads and its logits stay close
to the float32 model's."""

import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BUILDDIR = os.environ.get("SB_BUILDDIR", os.path.join(SRCDIR, "build"))
MODELS = os.environ.get("SB_FIXTURE_MODELS", os.path.join(BUILDDIR, "tests", "models"))
SEQBOAT = os.environ.get("SB_SEQBOAT", os.path.join(BUILDDIR, "seqboat"))
CASES = ("rotary-softmax", "simple-relu2-ffn")

sys.path.insert(0, os.path.join(SRCDIR, "tools"))
from seqboat_torch import safetensors_io  # noqa: E402

MATRIX_SUFFIXES = ("hx_proj.weight", "mx_proj.weight", "h_proj.weight", "fc1.weight",
                   "fc2.weight")


def is_matrix(name):
    return name in ("embed_tokens.weight", "output_projection.weight") or \
        any(name.endswith("." + s) for s in MATRIX_SUFFIXES)


def run(*args):
    return subprocess.run([SEQBOAT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


def logits(model, ids, out, *mode):
    r = run("logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out,
            *(mode or ("--prefill",)))
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    t, _, _ = safetensors_io.read(out)
    return t["logits"]


class QuantizeTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def quantize(self, case, kind):
        out = os.path.join(self.tmp.name, "%s-%s" % (case, kind))
        r = run("quantize", "-m", os.path.join(MODELS, case), "-o", out, "--type", kind)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "")
        return out

    def test_quantize_q8_blocks_round_to_nearest(self):
        for case in CASES:
            src, _, _ = safetensors_io.read(os.path.join(MODELS, case, "model.safetensors"))
            out = self.quantize(case, "q8")
            q, dt, _ = safetensors_io.read(os.path.join(out, "model.safetensors"), widen=False)
            for name, w in src.items():
                if name == "version":
                    continue
                if not is_matrix(name):
                    self.assertEqual(dt[name], "F32", name)
                    np.testing.assert_array_equal(q[name], w, err_msg=name)
                    continue
                self.assertEqual(dt[name], "I8", name)
                scale = q[name + ".q8_scale"].astype(np.float32)
                rows, cols = w.shape
                nb = (cols + 31) // 32
                self.assertEqual(scale.shape, (rows, nb))
                pad = np.zeros((rows, nb * 32), np.float32)
                pad[:, :cols] = w
                amax = np.abs(pad.reshape(rows, nb, 32)).max(axis=2)
                np.testing.assert_array_equal(scale, (amax / 127).astype(np.float16).astype(np.float32),
                                              err_msg=name)
                deq = (q[name].astype(np.float32).reshape(rows, cols)
                       * np.repeat(scale, 32, axis=1)[:, :cols])
                err = np.abs(deq - w)
                bound = 0.5 * np.repeat(scale, 32, axis=1)[:, :cols] * (1 + 1e-3) + 1e-12
                self.assertTrue((err <= bound).all(), "%s: %g" % (name, (err - bound).max()))
                self.assertLessEqual(np.abs(q[name]).max(), 127)

    def test_quantize_f16_bf16_match_numpy_rounding(self):
        case = CASES[0]
        src, _, _ = safetensors_io.read(os.path.join(MODELS, case, "model.safetensors"))
        for kind in ("f16", "bf16"):
            out = self.quantize(case, kind)
            q, dt, _ = safetensors_io.read(os.path.join(out, "model.safetensors"), widen=False)
            for name, w in src.items():
                if not is_matrix(name):
                    continue
                self.assertEqual(dt[name], kind.upper())
                if kind == "f16":
                    np.testing.assert_array_equal(q[name].view(np.uint16),
                                                  w.astype(np.float16).view(np.uint16), err_msg=name)
                else:
                    np.testing.assert_array_equal(q[name].view(np.uint16),
                                                  safetensors_io.f32_to_bf16_bits(w).reshape(w.shape),
                                                  err_msg=name)

    def test_quantize_logits_stay_close(self):
        ids = [2] + [4 + (7 * i) % 60 for i in range(60)]
        for case in CASES:
            ref = logits(os.path.join(MODELS, case), ids, os.path.join(self.tmp.name, "ref.st"))
            for kind, tol in (("f32", 0.0), ("f16", 0.05), ("bf16", 0.3), ("q8", 0.3)):
                out = self.quantize(case, kind)
                got = logits(out, ids, os.path.join(self.tmp.name, kind + ".st"))
                diff = np.abs(got - ref).max()
                self.assertLessEqual(diff, tol, "%s %s: logits differ by %g" % (case, kind, diff))

    def test_quantize_decode_kernels_match_prefill(self):
        # Decode reads q8/f16/bf16 weights through the matrix-vector kernels,
        # prefill dequantizes them for sgemm: both must give the same numbers.
        ids = [2] + [4 + (5 * i) % 60 for i in range(50)]
        for case in CASES:
            for kind in ("q8", "f16", "bf16"):
                out = self.quantize(case, kind)
                a = logits(out, ids, os.path.join(self.tmp.name, "p.st"), "--prefill")
                b = logits(out, ids, os.path.join(self.tmp.name, "d.st"), "-t", "3")
                diff = np.abs(a - b).max()
                self.assertLessEqual(diff, 1e-4, "%s %s: decode vs prefill %g" % (case, kind, diff))

    def test_quantize_refuses_bad_requests(self):
        case = CASES[0]
        r = run("quantize", "-m", os.path.join(MODELS, case), "-o",
                os.path.join(self.tmp.name, "x"), "--type", "q4")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--type", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "x")))
        r = run("quantize", "-m", os.path.join(MODELS, case), "-o", self.tmp.name, "--type", "q8")
        self.assertEqual(r.returncode, 2)
        self.assertIn("already exists", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
