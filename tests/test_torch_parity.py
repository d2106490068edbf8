#!/usr/bin/python3
"""tools/seqboat_torch/model.py against the official fixtures, and its
parallel (training) forward against its step-by-step recurrence."""

import os
import sys
import unittest

import torch

SRCDIR = os.environ.get("SB_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.environ.get("SB_FIXTURES", os.path.join(SRCDIR, "tests", "fixtures"))
sys.path.insert(0, os.path.join(SRCDIR, "tools"))

from seqboat_torch import model as M  # noqa: E402
from seqboat_torch import safetensors_io  # noqa: E402

TOL = 1e-4


def base_arch(**kw):
    a = dict(vocab_size=50, embed_dim=32, z_dim=16, hidden_dim=24, n_dim=4, layers=2,
             window=8, ffn_dim=0, max_positions=64, truncation_length=0,
             rel_pos_bias="rotary", attention="softmax", norm="layernorm",
             activation="silu", normalize_before=True, affine_final_norm=True,
             scale_embedding=True, tied_embeddings=True)
    a.update(kw)
    return a


def random_model(arch, seed):
    """A model with random weights whose routers decide clearly: the router
    rows of hx_proj are large and tau is 1, so |pr1 - pr0| is rarely small."""
    torch.manual_seed(seed)
    m = M.SeqBoatLM(arch)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for layer in m.layers:
            b = layer.slag_layer
            b.hx_proj.weight[:2].normal_(0.0, 1.0)
            b.hx_proj.bias[:2].normal_(0.0, 0.5)
            b.q_router.temp.zero_()
    return m.eval()


class FixtureParity(unittest.TestCase):
    def check(self, case):
        m, arch = M.from_official(os.path.join(FIXTURES, case, "checkpoint.pt"))
        m.eval()
        exp, _, _ = safetensors_io.read(os.path.join(FIXTURES, case, "expected.safetensors"))
        tokens = torch.from_numpy(exp["tokens"]).long()
        want_logits = torch.from_numpy(exp["logits"])
        want_act = torch.from_numpy(exp["act"])
        want_hidden = torch.from_numpy(exp["hidden"])
        T = tokens.numel()
        with torch.no_grad():
            logits, extra = m(tokens[None], return_hidden=True, return_router=True)
        self.assertEqual(tuple(logits.shape), (1, T, arch["vocab_size"]))
        self.assertLessEqual((logits[0] - want_logits).abs().max().item(), TOL)
        act = torch.stack(extra["act"])[:, 0].to(torch.uint8)
        self.assertTrue(torch.equal(act, want_act), "act bits differ (parallel)")
        hidden = torch.stack(extra["hidden"])[:, 0]
        self.assertLessEqual((hidden - want_hidden).abs().max().item(), TOL)
        # The fixtures route some tokens and skip others, so both paths ran.
        self.assertTrue(0 < int(act.sum()) < act.numel())

        state = m.new_state()
        rows, acts = [], []
        with torch.no_grad():
            for tok in tokens.tolist():
                lg, info = m.step(tok, state)
                rows.append(lg)
                acts.append(info["act"])
        self.assertLessEqual((torch.stack(rows) - want_logits).abs().max().item(), TOL)
        step_act = torch.tensor(acts, dtype=torch.uint8).t()
        self.assertTrue(torch.equal(step_act, want_act), "act bits differ (step)")

    def test_rotary_softmax(self):
        self.check("rotary-softmax")

    def test_simple_relu2_ffn(self):
        self.check("simple-relu2-ffn")


class ParallelEqualsRecurrent(unittest.TestCase):
    def check(self, arch, T, seed=0):
        m = random_model(arch, seed)
        g = torch.Generator().manual_seed(seed + 100)
        tokens = torch.randint(0, arch["vocab_size"], (T,), generator=g)
        with torch.no_grad():
            logits, extra = m(tokens[None], return_hidden=True, return_router=True)
            state = m.new_state()
            rows, acts, margins = [], [], []
            for tok in tokens.tolist():
                lg, info = m.step(tok, state)
                rows.append(lg)
                acts.append(info["act"])
                margins.append([abs(2 * p - 1) for p in info["pr1"]])
        act = torch.stack(extra["act"])[:, 0]
        step_act = torch.tensor(acts).t()
        self.assertGreater(min(min(r) for r in margins), 1e-4,
                           "a router decision is too close to a tie to compare")
        self.assertTrue(torch.equal(act, step_act), "act bits differ")
        frac = act.float().mean().item()
        self.assertTrue(0.1 < frac < 0.9, "routers fire on %.2f of tokens" % frac)
        self.assertLessEqual((logits[0] - torch.stack(rows)).abs().max().item(), TOL)
        return m, act

    def test_scalenorm_postnorm_ffn(self):
        self.check(base_arch(norm="scalenorm", normalize_before=False, ffn_dim=40), 60, seed=1)

    def test_rmsnorm_relu2_untied_unscaled(self):
        m, _ = self.check(base_arch(norm="rmsnorm", attention="relu2", tied_embeddings=False,
                                    scale_embedding=False), 60, seed=2)
        self.assertIn("output_projection.weight", m.state_dict())

    def test_laplace_simple(self):
        self.check(base_arch(attention="laplace", rel_pos_bias="simple", max_positions=16), 60,
                   seed=3)

    def test_window4_over_100_tokens(self):
        _, act = self.check(base_arch(window=4, layers=4), 100, seed=4)
        # The ring wraps in every layer, and the window reaches back further
        # than W raw positions (a raw-position window would differ).
        self.assertTrue(bool((act.sum(1) > 2 * 5).all()), act.sum(1))
        for row in act:
            idx = row.nonzero().flatten()
            self.assertGreater(int((idx[4:] - idx[:-4]).max()), 4)

    def test_gelu_relu_no_affine_final_norm(self):
        self.check(base_arch(activation="gelu", affine_final_norm=False, ffn_dim=20), 40, seed=5)
        self.check(base_arch(activation="relu", norm="rmsnorm", affine_final_norm=False), 40,
                   seed=6)

    def test_window_of_one_activated_token(self):
        # W=1: each activated token sees itself and the previous activated
        # token only, wherever it is.
        self.check(base_arch(window=1, layers=1), 50, seed=7)

    def test_parameter_names_match_spec(self):
        m = M.SeqBoatLM(base_arch(rel_pos_bias="simple", ffn_dim=8, tied_embeddings=False,
                                  layers=1))
        names = set(m.state_dict())
        want = {"embed_tokens.weight", "output_projection.weight", "final_norm.norm.weight",
                "final_norm.norm.bias"}
        b = "layers.0.slag_layer."
        want |= {b + n for n in ("norm.norm.weight", "norm.norm.bias", "move.delta",
                                 "move.alpha", "move.beta", "move.gamma", "move.omega",
                                 "q_router.temp", "hx_proj.weight", "hx_proj.bias",
                                 "mx_proj.weight", "mx_proj.bias", "h_proj.weight",
                                 "h_proj.bias", "gamma", "beta", "rel_pos_bias.rel_pos_bias")}
        f = "layers.0.nffn."
        want |= {f + n for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                 "norm.norm.weight", "norm.norm.bias")}
        self.assertEqual(names, want)
        self.assertEqual(tuple(m.state_dict()[b + "move.delta"].shape), (32, 4, 1))


if __name__ == "__main__":
    unittest.main(verbosity=2)
