#!/usr/bin/python3
"""tools/seqboat_torch/evaluate.py: bits per byte and activation rates of a
whole stream, against the model's own token-by-token recurrence (step(),
an independent path: no FFT, no masked attention), from a checkpoint and
from an exported model directory, with and without act_bias."""

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TOOLS = os.path.join(SRCDIR, "tools")
EVALUATE = os.path.join(TOOLS, "seqboat_torch", "evaluate.py")
sys.path.insert(0, TOOLS)

from seqboat_torch import export as exportmod  # noqa: E402
from seqboat_torch.model import SeqBoatLM  # noqa: E402

V = 50
BOS, EOS, PAD, UNK = 1, 2, -1, 0
BYTES = 777
ARCH = {"vocab_size": V, "embed_dim": 24, "z_dim": 8, "hidden_dim": 16, "n_dim": 4,
        "layers": 2, "window": 5, "ffn_dim": 12, "max_positions": 64, "truncation_length": 0,
        "rel_pos_bias": "rotary", "attention": "softmax", "norm": "layernorm",
        "activation": "silu", "normalize_before": True, "affine_final_norm": True,
        "scale_embedding": True, "tied_embeddings": True}


def reference(model, stream, act_bias):
    """(bits over targets other than <s>, scored, activation rate per layer)
    from step(), one token at a time."""
    state = model.new_state()
    bits, scored = 0.0, 0
    acts = np.zeros(ARCH["layers"])
    with torch.no_grad():
        for t in range(len(stream) - 1):
            logits, info = model.step(int(stream[t]), state, act_bias)
            acts += np.array(info["act"], dtype=float)
            if stream[t + 1] != BOS:
                lp = torch.log_softmax(logits.double(), -1)[int(stream[t + 1])]
                bits -= float(lp) / math.log(2)
                scored += 1
    return bits, scored, acts / (len(stream) - 1)


class Evaluate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="sb-test-evaluate-")
        d = cls.data = os.path.join(cls.tmp.name, "data")
        os.mkdir(d)
        rng = np.random.default_rng(11)
        docs = [rng.integers(3, V, size=n) for n in (40, 25, 31)]
        cls.stream = np.concatenate([np.concatenate([[BOS], doc, [EOS]]) for doc in docs])
        np.save(os.path.join(d, "valid.npy"), cls.stream.astype(np.uint16))
        np.save(os.path.join(d, "test.npy"), cls.stream[:50].astype(np.int32))
        with open(os.path.join(d, "stats.json"), "w") as f:
            json.dump({"valid": {"bytes": BYTES}, "test": {"bytes": 321}}, f)
        torch.manual_seed(3)
        cls.model = SeqBoatLM(ARCH, padding_idx=None).eval()
        with torch.no_grad():
            # Larger router weights than at initialisation, so that decisions
            # are far from ties and some tokens are activated, some not.
            for layer in cls.model.layers:
                layer.slag_layer.hx_proj.weight[:2].normal_(0, 0.5)
                layer.slag_layer.q_router.temp.fill_(0.0)
        tok = {"type": "sentencepiece", "bos_id": BOS, "eos_id": EOS, "pad_id": PAD,
               "unk_id": UNK}
        cls.ckpt = os.path.join(cls.tmp.name, "best.pt")
        torch.save({"model": cls.model.state_dict(), "arch": ARCH, "step": 1,
                    "tokenizer": tok}, cls.ckpt)
        spm = os.path.join(cls.tmp.name, "tokenizer.model")
        with open(spm, "wb") as f:
            f.write(b"not read by evaluate.py")
        cls.model_dir = os.path.join(cls.tmp.name, "model")
        exportmod.export(cls.model, ARCH, cls.model_dir, tok, spm, "f32")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def evaluate(self, model_path, *extra):
        out = os.path.join(self.tmp.name, "eval.json")
        r = subprocess.run([sys.executable, EVALUATE, model_path, "--data", self.data,
                            "--device", "cpu", "--json", out] + list(extra),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            return json.load(f)

    def check(self, rec, act_bias):
        bits, scored, acts = reference(self.model, self.stream, act_bias)
        self.assertEqual(rec["scored"], scored)
        self.assertEqual(rec["tokens"], len(self.stream))
        self.assertAlmostEqual(rec["bits"], bits, delta=1e-4 * bits)
        self.assertAlmostEqual(rec["bpb"], bits / BYTES, delta=1e-4 * bits / BYTES)
        # the rates are float32 means: compare the activated-token counts
        n = len(self.stream) - 1
        np.testing.assert_array_equal(np.rint(np.array(rec["act"]) * n), np.rint(acts * n))
        return acts

    def test_evaluate_checkpoint_matches_recurrence(self):
        res = self.evaluate(self.ckpt, "--split", "valid")
        (rec,) = res["splits"]["valid"]
        self.assertEqual(rec["act_bias"], 0.0)
        acts = self.check(rec, 0.0)
        self.assertTrue(((acts > 0) & (acts < 1)).any(), "routers should fire for some tokens only")
        # <s> targets are not scored: three documents, two <s> after the first token
        self.assertEqual(rec["scored"], len(self.stream) - 1 - 2)

    def test_evaluate_model_dir_and_act_bias(self):
        res = self.evaluate(self.model_dir, "--split", "valid", "--act-bias", "-0.7",
                            "--act-bias", "0.7")
        low, high = res["splits"]["valid"]
        a_low = self.check(low, -0.7)
        a_high = self.check(high, 0.7)
        # positive act_bias means fewer activations
        self.assertTrue((a_high <= a_low).all() and (a_high < a_low).any())

    def test_evaluate_default_splits_and_extreme_bias(self):
        res = self.evaluate(self.ckpt, "--act-bias", "1000", "--act-bias", "-1000")
        self.assertEqual(sorted(res["splits"]), ["test", "valid"])
        off, on = res["splits"]["test"]
        self.assertEqual(off["act"], [0.0, 0.0])
        self.assertEqual(on["act"], [1.0, 1.0])
        self.assertEqual(off["tokens"], 50)
        self.assertAlmostEqual(off["bpb"], off["bits"] / 321, places=12)


if __name__ == "__main__":
    unittest.main()
