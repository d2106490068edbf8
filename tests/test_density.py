#!/usr/bin/python3
"""tools/seqboat_torch/density.py and train.py's --density-target: the
penalty's value and gradient (temperature held), the dual ascent and the
target's ramp, the controller bringing a tiny model's routers to a target,
and a tiny CPU training run that meets its target and exports an ordinary
model whose routers the recurrence (step()) agrees with."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TOOLS = os.path.join(SRCDIR, "tools")
TRAIN = os.path.join(TOOLS, "seqboat_torch", "train.py")
sys.path.insert(0, TOOLS)

from seqboat_torch import density as D  # noqa: E402
from seqboat_torch import model as M  # noqa: E402

V = 40
ARCH = {"vocab_size": V, "embed_dim": 24, "z_dim": 8, "hidden_dim": 16, "n_dim": 4,
        "layers": 3, "window": 5, "ffn_dim": 12, "max_positions": 64, "truncation_length": 0,
        "rel_pos_bias": "rotary", "attention": "softmax", "norm": "layernorm",
        "activation": "silu", "normalize_before": True, "affine_final_norm": True,
        "scale_embedding": True, "tied_embeddings": True}


def tiny_model(seed=3, bias=0.0):
    torch.manual_seed(seed)
    m = M.SeqBoatLM(ARCH, padding_idx=None)
    with torch.no_grad():
        for layer in m.layers:
            b = layer.slag_layer
            b.hx_proj.weight[:2].normal_(0, 0.5)
            b.hx_proj.bias[0] = bias
            b.q_router.temp.fill_(0.0)
    return m


class Penalty(unittest.TestCase):
    def test_logit_is_the_router_decision(self):
        m = tiny_model().eval()
        ids = torch.randint(3, V, (2, 30), generator=torch.Generator().manual_seed(1))
        for bias in (0.0, 0.8):
            with torch.no_grad():
                _, extra = m(ids, act_bias=bias, return_router=True)
            for pr1, act, logit in zip(extra["pr1"], extra["act"], extra["logit"]):
                torch.testing.assert_close(torch.sigmoid(logit), pr1, rtol=1e-5, atol=1e-6)
                self.assertTrue(torch.equal(act, logit > 0) or
                                bool(((logit.abs() < 1e-6) | (act == (logit > 0))).all()))

    def test_penalty_value_and_gradient_hold_temperature(self):
        m = tiny_model().train()
        for layer in m.layers:
            layer.slag_layer.q_router.temp.data.fill_(0.7)
        ctl = D.DensityControl(0.3, ARCH["layers"], "layer", ramp=0.0, lr=0.1)
        ctl.lam = [0.5, 0.0, 2.0]
        ids = torch.randint(3, V, (2, 20), generator=torch.Generator().manual_seed(2))
        _, extra = m(ids, return_router=True)
        pen = ctl.penalty(extra["logit"])
        # softplus(logit) = -log(1 - pr1)
        want = sum(lam * float((-torch.log1p(-p.double())).mean())
                   for lam, p in zip(ctl.lam, extra["pr1"]))
        self.assertAlmostEqual(float(pen), want, places=5)
        pen.backward()
        # The last layer's router: its temperature gets no gradient from the
        # penalty (an earlier layer's does, through its attention's pr1
        # scaling, which feeds the later routers), and lowering its pr1
        # means raising u0 against u1.
        b = m.layers[-1].slag_layer
        self.assertTrue(b.q_router.temp.grad is None or float(b.q_router.temp.grad.abs()) == 0)
        self.assertGreater(float(b.hx_proj.weight.grad[:2].abs().max()), 0.0)
        self.assertGreater(float(b.hx_proj.bias.grad[1]), 0.0)
        self.assertLess(float(b.hx_proj.bias.grad[0]), 0.0)
        self.assertAlmostEqual(float(b.hx_proj.bias.grad[0]), -float(b.hx_proj.bias.grad[1]),
                               places=6)
        # Multipliers of zero: no gradient at all.
        m.zero_grad()
        ctl.lam = [0.0, 0.0, 0.0]
        _, extra = m(ids, return_router=True)
        ctl.penalty(extra["logit"]).backward()
        for p in m.parameters():
            self.assertTrue(p.grad is None or float(p.grad.abs().max()) == 0.0)

    def test_mean_scope_penalises_the_layer_mean(self):
        ctl = D.DensityControl(0.2, 3, "mean", ramp=0.0)
        ctl.lam = [3.0]
        logits = [torch.tensor([[0.0, 2.0]]), torch.tensor([[-1.0, 1.0]]), torch.tensor([[5.0]])]
        want = 3.0 * np.mean([np.mean(np.log1p(np.exp(l.numpy().ravel()))) for l in logits])
        self.assertAlmostEqual(float(ctl.penalty(logits)), want, places=5)


class DualAscent(unittest.TestCase):
    def test_multiplier_follows_the_excess_and_stays_non_negative(self):
        ctl = D.DensityControl(0.4, 2, "mean", ramp=0.0, lr=0.5, kp=0.0)
        self.assertEqual(ctl.update([0.9, 0.7], 0.5), [0.5 * (0.8 - 0.4)])
        self.assertAlmostEqual(ctl.update([0.9, 0.7], 0.6)[0], 0.4)
        self.assertAlmostEqual(ctl.update([0.3, 0.3], 0.7)[0], 0.35)
        for _ in range(10):
            ctl.update([0.0, 0.0], 0.8)
        self.assertEqual(ctl.lam, [0.0])

    def test_layer_scope_has_one_multiplier_per_layer(self):
        ctl = D.DensityControl(0.5, 3, "layer", ramp=0.0, lr=1.0, kp=0.0)
        self.assertEqual(ctl.update([0.9, 0.5, 0.1], 1.0), [0.4, 0.0, 0.0])
        st = ctl.state_dict()
        other = D.DensityControl(0.5, 3, "layer")
        other.load_state_dict(st)
        self.assertEqual(other.lam, [0.4, 0.0, 0.0])
        with self.assertRaises(ValueError):
            D.DensityControl(0.5, 3, "mean").load_state_dict(st)

    def test_target_ramps_from_start(self):
        ctl = D.DensityControl(0.2, 1, ramp=0.4, start=1.0, kp=0.0)
        self.assertAlmostEqual(ctl.target_at(0.0), 1.0)
        self.assertAlmostEqual(ctl.target_at(0.2), 0.6)
        self.assertAlmostEqual(ctl.target_at(0.4), 0.2)
        self.assertAlmostEqual(ctl.target_at(0.9), 0.2)
        self.assertFalse(ctl.ramp_done(0.39))
        self.assertTrue(ctl.ramp_done(0.4))
        # during the ramp the multiplier only reacts to the current target
        self.assertEqual(ctl.update([0.9], 0.0), [0.0])

    def test_bad_settings_are_refused(self):
        for kw in ({"target": 0.0}, {"target": 1.5}, {"target": 0.3, "scope": "all"},
                   {"target": 0.3, "ramp": 2.0}, {"target": 0.3, "lr": 0.0}):
            with self.assertRaises(ValueError):
                D.DensityControl(layers=2, **kw)

    def test_proportional_term(self):
        ctl = D.DensityControl(0.4, 1, "mean", ramp=0.0, lr=0.1, kp=2.0)
        self.assertAlmostEqual(ctl.update([0.6], 1.0)[0], 0.02 + 0.4)
        self.assertAlmostEqual(ctl.integral[0], 0.02)
        # below the target the proportional term may take lambda to zero
        # while the integral keeps what it had gathered, less the deficit
        self.assertEqual(ctl.update([0.2], 1.0), [0.0])
        self.assertAlmostEqual(ctl.integral[0], 0.0)

    def test_controller_settles_at_the_target(self):
        # Free router logits, confident at the start (all on), against a
        # pull towards "on" whose strength differs from token to token (a
        # stand-in for the LM loss: attention helps some tokens more than
        # others). With softplus's gradient pr1 against the pull's w (1 -
        # pr1), a token stays on while w > lambda, so the rate settles at
        # the target when lambda reaches about 1 - target (w uniform in
        # [0, 1]), neither above the target nor collapsed to zero.
        torch.manual_seed(0)
        L, N, target = 3, 400, 0.3
        logit = torch.nn.Parameter(torch.full((L, N), 4.0))
        w = torch.rand(L, N)
        for scope in ("layer", "mean"):
            with torch.no_grad():
                logit.fill_(4.0)
            ctl = D.DensityControl(target, L, scope, ramp=0.0, lr=0.05, kp=2.0)
            opt = torch.optim.Adam([logit], lr=5e-2)
            for _ in range(500):
                opt.zero_grad()
                rates = [float((logit[i] > 0).float().mean()) for i in range(L)]
                pull = -(w * torch.log(torch.sigmoid(logit))).mean(1).sum()
                (pull + ctl.penalty([logit[i] for i in range(L)])).backward()
                opt.step()
                ctl.update(rates, 1.0)
            rates = [float((logit[i] > 0).float().mean()) for i in range(L)]
            self.assertAlmostEqual(float(np.mean(rates)), target, delta=0.03, msg=(scope, rates))
            if scope == "layer":
                for r in rates:
                    self.assertAlmostEqual(r, target, delta=0.03, msg=rates)
                for lam in ctl.lam:
                    self.assertAlmostEqual(lam, 1 - target, delta=0.1)


class TrainRun(unittest.TestCase):
    def test_train_with_target_meets_it_and_exports_an_ordinary_model(self):
        with tempfile.TemporaryDirectory(prefix="sb-test-density-") as tmp:
            d = os.path.join(tmp, "data")
            os.mkdir(d)
            rng = np.random.default_rng(5)
            cycle = np.arange(4, V)
            train = np.tile(cycle, 200)[:6000]
            noise = rng.random(train.shape) < 0.2
            train[noise] = rng.integers(4, V, size=int(noise.sum()))
            np.save(os.path.join(d, "train.npy"), train.astype(np.uint16))
            np.save(os.path.join(d, "valid.npy"), np.tile(cycle, 20)[:400].astype(np.int32))
            with open(os.path.join(d, "stats.json"), "w") as f:
                json.dump({"valid": {"bytes": 1000},
                           "tokenizer": {"vocab_size": V, "bos_id": 2, "eos_id": 2,
                                         "pad_id": 1, "unk_id": 3}}, f)
            with open(os.path.join(d, "dict.txt"), "w") as f:
                for i in range(V - 4):
                    f.write("w%d %d\n" % (i, 1000 - i))
            out = os.path.join(tmp, "run")
            target = 0.25
            r = subprocess.run(
                [sys.executable, TRAIN, "--data", d, "--out", out, "--device", "cpu",
                 "--embed-dim", "32", "--z-dim", "16", "--hidden-dim", "32", "--n-dim", "4",
                 "--layers", "2", "--window", "4", "--ffn-dim", "24", "--seq-len", "48",
                 "--batch-size", "4", "--max-steps", "80", "--warmup", "5", "--lr", "1e-2",
                 "--log-every", "5", "--eval-every", "10", "--save-every", "40",
                 "--init-temp-scale", "0.05", "--init-act-bias", "-1.0",
                 "--density-target", str(target), "--density-ramp", "0.25",
                 "--density-lr", "1.0", "--density-scope", "layer"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(out, "log.jsonl")) as f:
                recs = [json.loads(l) for l in f]
            tr = [x for x in recs if x["type"] == "train"]
            va = [x for x in recs if x["type"] == "valid"]
            # the target's ramp: from 1 at the start to the target at 25% of 80 steps
            self.assertGreater(tr[0]["density_target"], 0.95)
            self.assertAlmostEqual(tr[-1]["density_target"], target)
            self.assertEqual(len(tr[-1]["density_lambda"]), 2)
            self.assertEqual([x["eligible"] for x in va], [x["step"] >= 20 for x in va])
            best = torch.load(os.path.join(out, "best.pt"))
            self.assertGreaterEqual(best["step"], 20)
            self.assertIn("density", best)
            # the last steps and the exported model respect the target
            # (training batches with dropout off here: the hard rates are
            # what the engine computes)
            late = np.array([x["act"] for x in tr[-4:]])
            self.assertLess(float(late.max()), target + 0.1, late)
            model, _ = M.from_model_dir(os.path.join(out, "model"))
            model.eval()
            stream = np.load(os.path.join(d, "valid.npy"))[:120]
            state = model.new_state()
            acts = np.zeros(2)
            with torch.no_grad():
                for t in stream:
                    _, info = model.step(int(t), state)
                    acts += np.array(info["act"], dtype=float)
                _, extra = model(torch.from_numpy(stream.astype(np.int64))[None], return_router=True)
            par = np.array([float(a.float().sum()) for a in extra["act"]])
            np.testing.assert_array_equal(par, acts)
            self.assertLess(float((acts / len(stream)).max()), target + 0.15, acts / len(stream))


if __name__ == "__main__":
    unittest.main(verbosity=2)
