#!/usr/bin/python3
"""tools/seqboat_torch/train.py and export.py: a tiny CPU run on random
tokens, resuming, exporting, and (when the binary is built) seqboat's
`logits` on the exported model against the PyTorch model."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
import yaml

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SEQBOAT = os.environ.get("SB_SEQBOAT")
TOOLS = os.path.join(SRCDIR, "tools")
TRAIN = os.path.join(TOOLS, "seqboat_torch", "train.py")
EXPORT = os.path.join(TOOLS, "seqboat_torch", "export.py")
sys.path.insert(0, TOOLS)

from seqboat_torch import model as M  # noqa: E402
from seqboat_torch import safetensors_io  # noqa: E402

V = 40          # 4 fairseq specials + 36 dictionary symbols
TOL = 1e-4


def run(args, **kw):
    return subprocess.run([sys.executable] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, **kw)


class TrainExport(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="sb-test-train-")
        d = cls.data = os.path.join(cls.tmp.name, "data")
        os.mkdir(d)
        rng = np.random.default_rng(5)
        # A learnable stream: mostly a fixed cycle, some noise.
        cycle = np.arange(4, V)
        train = np.tile(cycle, 200)[:6000]
        noise = rng.random(train.shape) < 0.2
        train[noise] = rng.integers(4, V, size=int(noise.sum()))
        np.save(os.path.join(d, "train.npy"), train.astype(np.uint16))
        valid = np.tile(cycle, 20)[:500]
        valid[::50] = 2   # some </s> (= <s> in fairseq: never counted)
        np.save(os.path.join(d, "valid.npy"), valid.astype(np.int32))
        with open(os.path.join(d, "stats.json"), "w") as f:
            json.dump({"valid": {"bytes": 1234},
                       "tokenizer": {"vocab_size": V, "bos_id": 2, "eos_id": 2,
                                     "pad_id": 1, "unk_id": 3}}, f)
        with open(os.path.join(d, "dict.txt"), "w") as f:
            for i in range(V - 4):
                f.write("w%d %d\n" % (i, 1000 - i))
        cls.common = ["--data", d, "--device", "cpu", "--embed-dim", "32", "--z-dim", "16",
                      "--hidden-dim", "32", "--n-dim", "4", "--layers", "2", "--window", "4",
                      "--ffn-dim", "24", "--seq-len", "48", "--batch-size", "4",
                      "--max-steps", "30", "--warmup", "5", "--lr", "1e-2", "--dropout", "0.1",
                      "--log-every", "5", "--eval-every", "15", "--save-every", "15",
                      "--init-temp-scale", "0.05", "--name", "tiny-test"]
        cls.run_a = os.path.join(cls.tmp.name, "run-a")
        cls.result_a = run([TRAIN, "--out", cls.run_a] + cls.common)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_run_writes_logs_checkpoints_and_model(self):
        r = self.result_a
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "")
        for name in ("last.pt", "best.pt", "log.jsonl"):
            self.assertTrue(os.path.exists(os.path.join(self.run_a, name)), name)
        with open(os.path.join(self.run_a, "log.jsonl")) as f:
            recs = [json.loads(l) for l in f]
        train = [x for x in recs if x["type"] == "train"]
        valid = [x for x in recs if x["type"] == "valid"]
        self.assertEqual([x["step"] for x in valid], [15, 30])
        self.assertTrue(all(np.isfinite(x["loss"]) for x in train))
        # 20 steps on a mostly periodic stream: clearly below chance.
        self.assertLess(valid[-1]["loss"], np.log(V - 4) - 0.3, valid)
        # Bits per byte = nats / ln 2 / bytes over the counted targets:
        # 499 targets minus the </s> ones.
        counted = 499 - int((np.load(os.path.join(self.data, "valid.npy"))[1:] == 2).sum())
        self.assertEqual(valid[-1]["tokens"], counted)
        self.assertAlmostEqual(valid[-1]["bpb"],
                               valid[-1]["loss"] * counted / np.log(2) / 1234, places=6)
        model_dir = os.path.join(self.run_a, "model")
        self.assertEqual(sorted(os.listdir(model_dir)),
                         ["config.yaml", "dict.txt", "model.safetensors"])
        with open(os.path.join(model_dir, "config.yaml")) as f:
            cfg = yaml.safe_load(f)
        self.assertEqual(cfg["architecture"]["vocab_size"], V)
        self.assertEqual(cfg["architecture"]["window"], 4)
        self.assertEqual(cfg["architecture"]["ffn_dim"], 24)
        self.assertEqual(cfg["tokenizer"]["type"], "fairseq")
        self.assertEqual(cfg["provenance"]["name"], "tiny-test")

    def test_resume_continues_exactly(self):
        self.assertEqual(self.result_a.returncode, 0, self.result_a.stderr)
        run_b = os.path.join(self.tmp.name, "run-b")
        r = run([TRAIN, "--out", run_b, "--stop-at-step", "15", "--no-export"] + self.common)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--resume", r.stderr)
        r = run([TRAIN, "--out", run_b, "--resume", "--no-export"] + self.common)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("resumed", r.stderr)
        a = torch.load(os.path.join(self.run_a, "last.pt"))
        b = torch.load(os.path.join(run_b, "last.pt"))
        self.assertEqual(a["step"], 30)
        self.assertEqual(b["step"], 30)
        for k in a["model"]:
            self.assertTrue(torch.equal(a["model"][k], b["model"][k]), k)

    def test_time_budget_stops_and_exports(self):
        run_c = os.path.join(self.tmp.name, "run-c")
        args = [a for a in self.common]
        args[args.index("--max-steps") + 1] = "1000000"
        r = run([TRAIN, "--out", run_c, "--max-minutes", "0.03", "--time-schedule"] + args,
                timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        last = torch.load(os.path.join(run_c, "last.pt"))
        self.assertLess(last["step"], 1000000)
        self.assertGreaterEqual(last["elapsed"], 0.03 * 60)
        with open(os.path.join(run_c, "log.jsonl")) as f:
            recs = [json.loads(l) for l in f]
        self.assertEqual(recs[-1]["type"], "valid")
        self.assertEqual(recs[-1]["step"], last["step"])
        self.assertTrue(os.path.exists(os.path.join(run_c, "model", "model.safetensors")))

    def exported(self, dtype):
        out = os.path.join(self.tmp.name, "export-" + dtype)
        if not os.path.exists(out):
            r = run([EXPORT, os.path.join(self.run_a, "best.pt"), "-o", out, "--dtype", dtype])
            self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def test_export_matches_model(self):
        self.assertEqual(self.result_a.returncode, 0, self.result_a.stderr)
        best = torch.load(os.path.join(self.run_a, "best.pt"))
        for dtype, rnd in (("f32", lambda t: t), ("f16", lambda t: t.half().float()),
                           ("bf16", lambda t: t.bfloat16().float())):
            out = self.exported(dtype)
            tensors, dtypes, _ = safetensors_io.read(os.path.join(out, "model.safetensors"))
            self.assertEqual(set(tensors), set(best["model"]))
            for k, v in best["model"].items():
                self.assertTrue(torch.equal(torch.from_numpy(tensors[k]), rnd(v.float())),
                                "%s %s" % (dtype, k))
        # Reloaded from the directory, the model computes what it computed.
        m, _ = M.from_model_dir(self.exported("f32"))
        ref = M.SeqBoatLM(best["arch"])
        ref.load_state_dict(best["model"])
        ids = torch.randint(4, V, (1, 30), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            self.assertTrue(torch.equal(m.eval()(ids), ref.eval()(ids)))

    def test_exported_refuses_overwrite(self):
        out = self.exported("f32")
        r = run([EXPORT, os.path.join(self.run_a, "best.pt"), "-o", out])
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_seqboat_logits_match(self):
        if not SEQBOAT or not os.path.exists(SEQBOAT):
            self.skipTest("SB_SEQBOAT unset or not built: cannot compare with seqboat logits")
        out = self.exported("f32")
        m, _ = M.from_model_dir(out)
        m.eval()
        # Inputs whose every routing decision is clear of a tie by 1e-3, so
        # float rounding cannot flip one between the two implementations.
        g = torch.Generator().manual_seed(11)
        for _ in range(200):
            ids = torch.randint(3, V, (40,), generator=g)
            with torch.no_grad():
                logits, extra = m(ids[None], return_router=True)
            margin = min(float((2 * p - 1).abs().min()) for p in extra["pr1"])
            if margin > 1e-3:
                break
        self.assertGreater(margin, 1e-3, "no input with clear routing decisions found")
        act = torch.stack(extra["act"])[:, 0].to(torch.uint8)
        self.assertTrue(0 < int(act.sum()) < act.numel(), act)
        for mode in ([], ["--prefill"], ["--split", "17"]):
            res = os.path.join(self.tmp.name, "logits%s.safetensors" % "".join(mode))
            r = subprocess.run([SEQBOAT, "logits", "-m", out, "--ids",
                                " ".join(str(i) for i in ids.tolist()), "-o", res] + mode,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            got, _, _ = safetensors_io.read(res)
            self.assertEqual(tuple(got["logits"].shape), (40, V))
            diff = (torch.from_numpy(got["logits"]) - logits[0]).abs().max().item()
            self.assertLessEqual(diff, TOL, "seqboat logits %s differ by %g" % (mode, diff))
            self.assertTrue(torch.equal(torch.from_numpy(got["act"]), act), mode)


if __name__ == "__main__":
    unittest.main(verbosity=2)
