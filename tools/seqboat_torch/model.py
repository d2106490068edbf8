"""The SeqBoat language model in PyTorch, written from docs/computation.md.

Parameter names are those of docs/computation.md section 5 without the 'decoder.' prefix,
so `state_dict()` is what tools/seqboat_torch/export.py writes and what the
converter produces from an official checkpoint. Two forwards compute the
same function:

- `forward(tokens)`: the whole sequence at once, for training. The EMA is a
  causal convolution with its exact kernel (no truncation, computed by FFT in
  float32); the router makes the same hard decision as at inference
  (pr1 > 1 - pr1) and scales the attention output by pr1, which is where the
  router's gradient comes from; the attention of each activated token covers
  itself and the W activated tokens before it, found through a running count
  of activated tokens (a masked T x T attention).
- `step(token, state)`: one token at a time with the constant-size state of
  docs/computation.md section 2 (EMA state + ring of the last W+1 activated keys), the
  computation seqboat's C engine does. Used to test the parallel forward.

Shapes: B batch, T tokens, D, Z, H, N, W, V, L, F as in docs/computation.md.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Laplace attention constants (docs/computation.md section 2).
LAPLACE_MU = math.sqrt(0.5)
LAPLACE_STD = math.sqrt(0.25 / math.pi)
# Stands in for -inf where a softmax row may have no allowed key at all (a
# token that is not activated): keeps every row finite, so no NaN reaches the
# gradient through the rows that are discarded.
MASK_VALUE = -1e9


def activation_fn(name):
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ValueError("unknown activation %r" % name)


class ScaleNorm(nn.Module):
    def __init__(self, eps, affine):
        super().__init__()
        self.eps = eps
        self.scalar = nn.Parameter(torch.ones(1)) if affine else None

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.scalar if self.scalar is not None else y


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, affine):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight if self.weight is not None else y


class SequenceNorm(nn.Module):
    """One of the three norms of docs/computation.md section 4 under `.norm` (the official
    parameter path is '<owner>.norm.norm.weight')."""

    def __init__(self, kind, dim, affine=True, eps=1e-5):
        super().__init__()
        if kind == "layernorm":
            self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        elif kind == "scalenorm":
            self.norm = ScaleNorm(eps, affine)
        elif kind == "rmsnorm":
            self.norm = RMSNorm(dim, eps, affine)
        else:
            raise ValueError("unknown norm %r" % kind)

    def forward(self, x):
        return self.norm(x)


class MultiHeadEMA(nn.Module):
    """The damped EMA of docs/computation.md section 2: h = q h + p beta x,
    ema = sum_n gamma h / sqrt(N) + omega x, per channel."""

    def __init__(self, D, N):
        super().__init__()
        self.D, self.N = D, N
        self.delta = nn.Parameter(torch.zeros(D, N, 1))   # (D, N, 1)
        self.alpha = nn.Parameter(torch.zeros(D, N, 1))   # (D, N, 1)
        self.beta = nn.Parameter(torch.zeros(D, N, 1))    # (D, N, 1)
        self.gamma = nn.Parameter(torch.zeros(D, N))      # (D, N)
        self.omega = nn.Parameter(torch.zeros(D))         # (D,)
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            nn.init.normal_(self.delta, mean=0.0, std=0.2)
            nn.init.normal_(self.alpha, mean=0.0, std=0.2)
            sign = torch.ones(self.N, 1)
            if self.N > 1:
                sign[1::2] = -1.0
            self.beta.normal_(mean=0.0, std=0.02).add_(sign)
            nn.init.normal_(self.gamma, mean=0.0, std=1.0)
            nn.init.normal_(self.omega, mean=0.0, std=1.0)

    def coefficients(self):
        """(q, p*beta, gamma/sqrt(N)), each (D, N), in float32."""
        p = torch.sigmoid(self.delta.float()).squeeze(-1)
        a = torch.sigmoid(self.alpha.float()).squeeze(-1)
        q = 1.0 - p * a
        return q, p * self.beta.float().squeeze(-1), self.gamma.float() * math.sqrt(1.0 / self.N)

    def kernel(self, T):
        """(D, T): the response at lag j to a unit input, sum_n c_n q_n^j."""
        q, pb, g = self.coefficients()
        j = torch.arange(T, device=q.device, dtype=torch.float32)
        powers = torch.pow(q.unsqueeze(-1), j)                     # (D, N, T)
        return torch.einsum("dn,dnt->dt", pb * g, powers)

    def forward(self, x):
        """x (B, T, D) -> ema (B, T, D) float32, exact over the whole sequence."""
        B, T, D = x.shape
        with _no_autocast(x.device):
            xf = x.float().transpose(1, 2)                          # (B, D, T)
            k = self.kernel(T)                                      # (D, T)
            n = 2 * T
            y = torch.fft.irfft(torch.fft.rfft(xf, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :T]
            y = y + xf * self.omega.float().unsqueeze(-1)
            return y.transpose(1, 2)

    def step(self, x, h):
        """One token: x (B, D), h (B, D, N) -> (ema (B, D), new h)."""
        q, pb, g = self.coefficients()
        h = q * h + pb * x.float().unsqueeze(-1)
        ema = (h * g).sum(-1) + self.omega.float() * x.float()
        return ema, h


class _no_autocast(object):
    """Disables autocast in a region (the EMA's FFT runs in float32)."""

    def __init__(self, device):
        if hasattr(torch, "autocast") and device.type in ("cuda", "cpu"):
            try:
                self.ctx = torch.autocast(device_type=device.type, enabled=False)
            except (TypeError, RuntimeError):
                self.ctx = None
        else:
            self.ctx = None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


class Router(nn.Module):
    """The latent configurator's temperature: tau = exp(temp)."""

    def __init__(self, D, init_temp_scale):
        super().__init__()
        self.temp = nn.Parameter(torch.full((1,), math.log(init_temp_scale * math.sqrt(D))))

    def forward(self, u, act_bias=0.0):
        """u (..., 2) -> (pr1 (...), activated (...) bool), in float32."""
        u = u.float()
        tau = torch.exp(self.temp.float())
        logits = torch.stack([u[..., 0] + act_bias, u[..., 1]], dim=-1) / tau
        pr1 = torch.softmax(logits, dim=-1)[..., 1]
        return pr1, pr1 > 1.0 - pr1

    def logit(self, u, act_bias=0.0):
        """(u1 - u0 - act_bias) / tau with tau's gradient stopped: pr1 =
        sigmoid(logit) in value; what density.py penalises (training only)."""
        u = u.float()
        return (u[..., 1] - u[..., 0] - act_bias) / torch.exp(self.temp.float()).detach()


class RelativePositionBias(nn.Module):
    """Learned bias by raw distance: w[clamp(M - 1 + t_j - t, 0, 2M - 2)]."""

    def __init__(self, M):
        super().__init__()
        self.M = M
        self.rel_pos_bias = nn.Parameter(torch.zeros(2 * M - 1))   # (2M-1,)
        nn.init.normal_(self.rel_pos_bias, mean=0.0, std=0.02)

    def matrix(self, pos_q, pos_k):
        """pos_q (..., Tq), pos_k (..., Tk) -> bias (..., Tq, Tk)."""
        idx = (self.M - 1 + pos_k.unsqueeze(-2) - pos_q.unsqueeze(-1)).clamp(0, 2 * self.M - 2)
        return self.rel_pos_bias[idx]


def rotary_tables(positions, Z, device):
    """cos, sin (..., Z/2) for raw positions, angles computed in float64."""
    i = torch.arange(Z // 2, dtype=torch.float64, device=device)
    inv = torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=device), -2.0 * i / Z)
    ang = positions.to(torch.float64).unsqueeze(-1) * inv
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rotary(x, cos, sin):
    """Rotates interleaved pairs (x[2i], x[2i+1]) of x (..., Z)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


class SeqBoatBlock(nn.Module):
    """One layer's gated attention unit ('layers.{l}.slag_layer')."""

    def __init__(self, arch, dropout=0.0, init_temp_scale=1.0):
        super().__init__()
        D, Z, H, N = arch["embed_dim"], arch["z_dim"], arch["hidden_dim"], arch["n_dim"]
        self.D, self.Z, self.H, self.W = D, Z, H, arch["window"]
        self.attention = arch["attention"]
        self.rel_pos = arch["rel_pos_bias"]
        self.prenorm = arch["normalize_before"]
        self.act = activation_fn(arch["activation"])
        self.dropout = nn.Dropout(dropout)
        self.norm = SequenceNorm(arch["norm"], D)
        self.move = MultiHeadEMA(D, N)
        self.gamma = nn.Parameter(torch.zeros(2, Z))     # (2, Z)
        self.beta = nn.Parameter(torch.zeros(2, Z))      # (2, Z)
        if self.rel_pos == "simple":
            self.rel_pos_bias = RelativePositionBias(arch["max_positions"])
        self.q_router = Router(D, init_temp_scale)
        self.mx_proj = nn.Linear(D, Z + 2 * H)           # (Z+2H, D)
        self.hx_proj = nn.Linear(D, 2 + D)               # (2+D, D)
        self.h_proj = nn.Linear(H, D)                    # (D, H)
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            for lin in (self.mx_proj, self.hx_proj, self.h_proj):
                nn.init.normal_(lin.weight, mean=0.0, std=0.02)
                nn.init.zeros_(lin.bias)
            nn.init.normal_(self.gamma, mean=0.0, std=0.02)
            nn.init.zeros_(self.beta)

    def _score_scale(self):
        return 1.0 / math.sqrt(self.Z) if self.attention == "softmax" else 1.0 / self.W

    def _weights(self, s, allowed):
        """Attention weights from scores s (..., Tk) where `allowed`."""
        if self.attention == "softmax":
            return torch.softmax(s.float().masked_fill(~allowed, MASK_VALUE), dim=-1).to(s.dtype)
        if self.attention == "relu2":
            a = F.relu(s).pow(2)
        else:
            a = 0.5 * (1.0 + torch.erf((s.float() - LAPLACE_MU) / (LAPLACE_STD * math.sqrt(2.0))))
            a = a.to(s.dtype)
        return a.masked_fill(~allowed, 0.0)

    def forward(self, x, positions, act_bias=0.0, need_router=False):
        """x (B, T, D), positions (T,) raw -> y (B, T, D) [, pr1, act, logit
        (B, T)] (logit: Router.logit, for the density penalty)."""
        B, T, D = x.shape
        r0 = x
        xn = self.norm(x) if self.prenorm else x
        mx = self.dropout(self.act(self.move(xn).to(xn.dtype)))
        hu = self.hx_proj(mx)
        u, hx = hu[..., :2], hu[..., 2:]
        pr1, act = self.q_router(u, act_bias)                        # (B, T)
        zgv = self.act(self.mx_proj(mx))
        z, g, v = torch.split(zgv, [self.Z, self.H, self.H], dim=-1)
        qv = z * self.gamma[0] + self.beta[0]                         # (B, T, Z)
        kv = z * self.gamma[1] + self.beta[1]
        if self.rel_pos == "rotary":
            cos, sin = rotary_tables(positions, self.Z, x.device)
            qv, kv = apply_rotary(qv, cos, sin), apply_rotary(kv, cos, sin)
        # A key j serves query i when j is activated, not in i's future, and
        # among the W activated tokens before i (rank counts activated tokens).
        rank = torch.cumsum(act.int(), dim=1, dtype=torch.int32)     # (B, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        allowed = (causal.unsqueeze(0) & act.unsqueeze(1)
                   & ((rank.unsqueeze(2) - rank.unsqueeze(1)) <= self.W))  # (B, T, T)
        s = torch.matmul(qv * self._score_scale(), kv.transpose(1, 2))  # (B, T, T)
        if self.rel_pos == "simple":
            s = s + self.rel_pos_bias.matrix(positions, positions).to(s.dtype)
        a = self._weights(s, allowed)
        o = torch.matmul(a.to(v.dtype), v)                           # (B, T, H)
        att = self.h_proj(o * g) * pr1.unsqueeze(-1).to(o.dtype)
        att = torch.where(act.unsqueeze(-1), att, torch.zeros_like(att))
        y = self.act(hx + self.dropout(att) + r0)
        if not self.prenorm:
            y = self.norm(y)
        if need_router:
            return y, pr1, act, self.q_router.logit(u, act_bias)
        return y

    def step(self, x, t, state, act_bias=0.0):
        """One token for one sequence: x (D,), raw position t, state
        {'h': (1, D, N), 'ring': [(key (Z,), value (H,), t_j)]}. Returns
        (y (D,), pr1, activated); updates state in place."""
        r0 = x
        xn = self.norm(x) if self.prenorm else x
        ema, state["h"] = self.move.step(xn.unsqueeze(0), state["h"])
        mx = self.act(ema[0].to(x.dtype))
        hu = self.hx_proj(mx)
        u, hx = hu[:2], hu[2:]
        pr1, act = self.q_router(u, act_bias)
        att = torch.zeros_like(hx)
        if bool(act):
            z, g, v = torch.split(self.act(self.mx_proj(mx)), [self.Z, self.H, self.H])
            qv = z * self.gamma[0] + self.beta[0]
            kv = z * self.gamma[1] + self.beta[1]
            if self.rel_pos == "rotary":
                cos, sin = rotary_tables(torch.tensor(t), self.Z, x.device)
                qv, kv = apply_rotary(qv, cos, sin), apply_rotary(kv, cos, sin)
            ring = state["ring"]
            ring.append((kv, v, t))
            if len(ring) > self.W + 1:
                ring.pop(0)
            keys = torch.stack([e[0] for e in ring])                  # (R, Z)
            vals = torch.stack([e[1] for e in ring])                  # (R, H)
            s = keys @ (qv * self._score_scale())                     # (R,)
            if self.rel_pos == "simple":
                tj = torch.tensor([e[2] for e in ring], device=x.device)
                s = s + self.rel_pos_bias.matrix(torch.tensor([t], device=x.device), tj)[0]
            a = self._weights(s, torch.ones_like(s, dtype=torch.bool))
            o = a @ vals
            att = self.h_proj(o * g) * pr1
        y = self.act(hx + att + r0)
        if not self.prenorm:
            y = self.norm(y)
        return y, pr1, act


class FeedForward(nn.Module):
    """'layers.{l}.nffn': y = W2 act(W1 Norm(y)) + b2 + y."""

    def __init__(self, arch, dropout=0.0):
        super().__init__()
        D, Fd = arch["embed_dim"], arch["ffn_dim"]
        self.prenorm = arch["normalize_before"]
        self.act = activation_fn(arch["activation"])
        self.dropout = nn.Dropout(dropout)
        self.norm = SequenceNorm(arch["norm"], D)
        self.fc1 = nn.Linear(D, Fd)    # (F, D)
        self.fc2 = nn.Linear(Fd, D)    # (D, F)
        with torch.no_grad():
            for lin in (self.fc1, self.fc2):
                nn.init.normal_(lin.weight, mean=0.0, std=0.02)
                nn.init.zeros_(lin.bias)

    def forward(self, y):
        r1 = y
        yn = self.norm(y) if self.prenorm else y
        y = self.dropout(self.fc2(self.dropout(self.act(self.fc1(yn))))) + r1
        if not self.prenorm:
            y = self.norm(y)
        return y


class SeqBoatLayer(nn.Module):
    def __init__(self, arch, dropout=0.0, init_temp_scale=1.0):
        super().__init__()
        self.slag_layer = SeqBoatBlock(arch, dropout, init_temp_scale)
        self.nffn = FeedForward(arch, dropout) if arch["ffn_dim"] > 0 else None


class SeqBoatLM(nn.Module):
    """The whole model of docs/computation.md section 1. `arch` is the 'architecture'
    mapping of config.yaml (docs/model-format.md)."""

    def __init__(self, arch, dropout=0.0, padding_idx=1, init_temp_scale=1.0):
        super().__init__()
        self.arch = dict(arch)
        V, D = arch["vocab_size"], arch["embed_dim"]
        self.padding_idx = padding_idx if padding_idx is not None and 0 <= padding_idx < V else None
        self.embed_scale = math.sqrt(D) if arch["scale_embedding"] else 1.0
        self.dropout = nn.Dropout(dropout)
        self.embed_tokens = nn.Embedding(V, D, padding_idx=self.padding_idx)
        self.layers = nn.ModuleList([SeqBoatLayer(arch, dropout, init_temp_scale)
                                     for _ in range(arch["layers"])])
        if arch["normalize_before"]:
            self.final_norm = SequenceNorm(arch["norm"], D, affine=arch["affine_final_norm"])
        else:
            self.final_norm = None
        if arch["tied_embeddings"]:
            self.output_projection = None
        else:
            self.output_projection = nn.Linear(D, V, bias=False)   # (V, D)
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=D ** -0.5)
        with torch.no_grad():
            nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=D ** -0.5)
            if self.padding_idx is not None:
                self.embed_tokens.weight[self.padding_idx].zero_()

    def output_weight(self):
        if self.output_projection is None:
            return self.embed_tokens.weight
        return self.output_projection.weight

    def forward(self, tokens, act_bias=0.0, return_hidden=False, return_router=False,
                features_only=False):
        """tokens (B, T) int64 -> logits (B, T, V) (or final features (B, T, D)
        with features_only). With return_hidden / return_router also returns
        a dict with 'hidden' [L x (B, T, D)] (each block's output after its
        FFN), 'pr1', 'act' and 'logit' [L x (B, T)] ('logit' is the router's
        logit difference with the temperature's gradient stopped, the
        density penalty's input: see density.py)."""
        B, T = tokens.shape
        positions = torch.arange(T, device=tokens.device)
        x = self.dropout(self.embed_tokens(tokens) * self.embed_scale)
        extra = {"hidden": [], "pr1": [], "act": [], "logit": []}
        for layer in self.layers:
            x, pr1, act, logit = layer.slag_layer(x, positions, act_bias, need_router=True)
            if layer.nffn is not None:
                x = layer.nffn(x)
            if return_hidden:
                extra["hidden"].append(x)
            if return_router:
                extra["pr1"].append(pr1)
                extra["act"].append(act)
                extra["logit"].append(logit)
        if self.final_norm is not None:
            x = self.final_norm(x)
        out = x if features_only else F.linear(x, self.output_weight())
        if return_hidden or return_router:
            return out, extra
        return out

    def new_state(self, device=None):
        """The recurrent state of one sequence at position 0."""
        D, N = self.arch["embed_dim"], self.arch["n_dim"]
        return {"t": 0, "layers": [{"h": torch.zeros(1, D, N, device=device), "ring": []}
                                   for _ in self.layers]}

    def step(self, token, state, act_bias=0.0):
        """Feeds one token id of one sequence. Returns (logits (V,), info)
        with info {'hidden': [L x (D,)], 'pr1': [L floats], 'act': [L bools]}."""
        t = state["t"]
        device = self.embed_tokens.weight.device
        x = self.embed_tokens(torch.tensor([int(token)], device=device))[0] * self.embed_scale
        info = {"hidden": [], "pr1": [], "act": []}
        for layer, ls in zip(self.layers, state["layers"]):
            x, pr1, act = layer.slag_layer.step(x, t, ls, act_bias)
            if layer.nffn is not None:
                x = layer.nffn(x)
            info["hidden"].append(x)
            info["pr1"].append(float(pr1))
            info["act"].append(bool(act))
        if self.final_norm is not None:
            x = self.final_norm(x)
        state["t"] = t + 1
        return F.linear(x, self.output_weight()), info


def official_state_dict(model):
    """The model's tensors under their docs/computation.md section 5 names (tied output
    projection left out), float32, in module order."""
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def load_tensors(model, tensors, strict=True):
    """Loads {name: tensor or numpy array} (names of docs/computation.md section 5) into model."""
    sd = {}
    for k, v in tensors.items():
        t = v if torch.is_tensor(v) else torch.from_numpy(v)
        sd[k] = t.float()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise ValueError("tensor names differ: missing %s, unexpected %s"
                         % (sorted(missing), sorted(unexpected)))
    return model


def from_model_dir(path, dropout=0.0):
    """Builds a SeqBoatLM from a seqboat model directory."""
    import os
    from . import config as cfgmod
    from . import safetensors_io
    cfg = cfgmod.load(os.path.join(path, "config.yaml"))
    tensors, _, _ = safetensors_io.read(os.path.join(path, "model.safetensors"))
    model = SeqBoatLM(cfg["architecture"], dropout=dropout, padding_idx=cfg["tokenizer"]["pad_id"])
    return load_tensors(model, tensors), cfg


def from_official(path, label=None):
    """Builds a SeqBoatLM from an official checkpoint through the
    converter's safe loader. Returns (model, architecture)."""
    from . import checkpoint as ckmod
    ck = ckmod.safe_load(path)
    arch, tensors = ckmod.extract(ck, label or path)
    model = SeqBoatLM(arch)
    return load_tensors(model, tensors), arch
