"""Density control: training that holds the routers' activation rate at a target.

A SeqBoat router activates the gated attention unit for token t of layer l
when pr1 > 1 - pr1, i.e. pr1 > 0.5, with pr1 = softmax([u0, u1] / tau)[1]
(SPEC.md section 2). The language-model loss alone gives the router little
reason to switch attention off: its gradient reaches the router only through
the activated tokens (their attention output is scaled by pr1), so nothing
rewards a token for skipping attention, and a model trained that way keeps
attention on for most tokens. This module adds the missing pressure as a
constraint, solved by a Lagrange multiplier:

    minimise  LM loss   subject to   rate <= target

- rate is the fraction of tokens whose router fires in the training batch:
  the same hard decision as at inference, so the target means what the C
  engine will see (up to dropout, which is on in training). With scope
  'mean' there is one constraint on the rate averaged over the layers (the
  model may keep attention on where it matters and drop it elsewhere; decode
  cost follows the mean); with scope 'layer' one constraint per layer.
- The hard decision has no gradient, so the penalty needs a differentiable
  stand-in. It is softplus(x) = -log(1 - pr1) with x = (u1 - u0) / tau the
  router's logit: loss + sum_c lambda_c * mean(softplus(x)). Its gradient
  with respect to x is pr1 itself, so every token is pushed towards "off"
  in proportion to how much its router wants it on, and the push does not
  vanish for confident routers. The obvious stand-in, mean(pr1), has the
  gradient pr1 (1 - pr1), which vanishes as pr1 -> 1: confident routers
  then do not move until lambda is large, and then all flip at once (tried
  on a toy: the rate swings between 1 and 0). Which tokens keep attention
  is left to the LM loss, which pushes back where attention helps. The
  temperature tau is held constant inside the penalty (its gradient is
  stopped there): the cheapest way to lower pr1 when most tokens are on
  would otherwise be a larger tau, which pulls every pr1 towards 0.5
  without switching any token off and makes the router less decisive (and
  act_bias weaker).
- lambda_c is not a hand-tuned weight but a multiplier set by a PI
  controller on the measured hard rate (dual ascent plus a proportional
  term, which damps the oscillation plain dual ascent shows when the
  optimizer has momentum):
      I_c <- max(0, I_c + lr * (rate_c - target))
      lambda_c = max(0, I_c + kp * (rate_c - target))
  It grows while the rate is above the target and falls back once the
  constraint is met with room to spare, so the run settles at the target
  instead of collapsing to an all-off model, whatever the scale of the LM
  loss. This is what makes a trade-off curve at chosen densities possible.
- The target follows a schedule: from `start` (default 1.0: no pressure)
  down to `target` linearly over the first `ramp` fraction of the run's
  progress (the same progress that drives the learning-rate schedule),
  then constant. Switching attention off gradually gives the rest of the
  model (EMA, FFN) time to take over what the dropped attention did.

Nothing here changes what the router computes: the exported model is an
ordinary SeqBoat model that the C engine runs as any other. act_bias
(SPEC.md section 2) adds to u0 at inference; the same shift at training time
is a constant added to the router's learned bias, which train.py's
--init-act-bias applies once to the router bias (hx_proj.bias[0]) so that
the exported weights carry it and no inference-time setting is needed.
"""

import torch
import torch.nn.functional as F

SCOPES = ("mean", "layer")


class DensityControl(object):
    """The constraint rate <= target(progress) on L routers."""

    def __init__(self, target, layers, scope="mean", ramp=0.3, start=1.0, lr=0.05, kp=2.0):
        if not 0.0 < target <= 1.0:
            raise ValueError("density target must be in (0, 1], got %r" % target)
        if scope not in SCOPES:
            raise ValueError("density scope must be one of %s, got %r" % (SCOPES, scope))
        if not 0.0 <= ramp <= 1.0:
            raise ValueError("density ramp must be in [0, 1], got %r" % ramp)
        if lr <= 0:
            raise ValueError("density lr must be positive, got %r" % lr)
        self.target, self.layers, self.scope = float(target), int(layers), scope
        self.ramp, self.start, self.lr = float(ramp), max(float(start), float(target)), float(lr)
        self.kp = float(kp)
        self.integral = [0.0] * (self.layers if scope == "layer" else 1)
        self.lam = list(self.integral)

    def target_at(self, progress):
        """The target at progress in [0, 1] of the run."""
        if self.ramp <= 0.0 or progress >= self.ramp:
            return self.target
        f = max(progress, 0.0) / self.ramp
        return self.start + (self.target - self.start) * f

    def ramp_done(self, progress):
        return self.ramp <= 0.0 or progress >= self.ramp

    @staticmethod
    def surrogates(router_logits):
        """router_logits: L tensors (B, T) of (u1 - u0 - act_bias) / tau with
        tau detached (SeqBoatLM's extra['logit']). Returns the L tensors
        mean(softplus(logit)) = mean(-log(1 - pr1))."""
        return [F.softplus(d.float()).mean() for d in router_logits]

    def penalty(self, router_logits):
        """sum_c lambda_c * surrogate_c (a scalar tensor): add it to the loss."""
        rates = self.surrogates(router_logits)
        if self.scope == "layer":
            terms = [lam * r for lam, r in zip(self.lam, rates)]
        else:
            terms = [self.lam[0] * torch.stack(rates).mean()]
        return torch.stack(terms).sum()

    def constrained(self, rates):
        """The constrained quantities from L hard rates (floats)."""
        if self.scope == "layer":
            return list(rates)
        return [sum(rates) / len(rates)]

    def update(self, rates, progress):
        """Dual ascent after a step, from the L hard rates of its batch
        (floats, the same on every rank). Returns the multipliers."""
        if len(rates) != self.layers:
            raise ValueError("expected %d layer rates, got %d" % (self.layers, len(rates)))
        tgt = self.target_at(progress)
        for i, r in enumerate(self.constrained(rates)):
            err = r - tgt
            self.integral[i] = max(0.0, self.integral[i] + self.lr * err)
            self.lam[i] = max(0.0, self.integral[i] + self.kp * err)
        return list(self.lam)

    def state_dict(self):
        return {"target": self.target, "scope": self.scope, "lam": list(self.lam),
                "integral": list(self.integral)}

    def load_state_dict(self, st):
        if st.get("scope") != self.scope or len(st.get("lam", [])) != len(self.lam):
            raise ValueError("density state of scope %r with %d multipliers does not fit "
                             "scope %r" % (st.get("scope"), len(st.get("lam", [])), self.scope))
        self.lam = [float(v) for v in st["lam"]]
        self.integral = [float(v) for v in st.get("integral", st["lam"])]
