"""Trains a SeqBoat language model on token arrays and exports it.

One process:   python3 tools/seqboat_torch/train.py --data DIR --out RUN [options]
Several GPUs:  torchrun --nproc_per_node=K tools/seqboat_torch/train.py ...

DIR holds train.npy and valid.npy (1-D uint16 or int32 token streams), and
optionally stats.json as written by tools/data/prepare_sotu.py (its
valid.bytes gives bits per byte, its tokenizer section the special ids and
vocabulary size) and the tokenizer file (tokenizer.model or dict.txt).

Training samples random windows of --seq-len + 1 tokens from train.npy
(each rank its own, reproducibly from seed, step and rank). Validation runs
over the whole of valid.npy in consecutive windows of --seq-len predictions
(the context restarts at each window), counting every target except <s>.
Bits per byte = total NLL in bits / valid bytes.

RUN receives last.pt (model, optimizer, step, RNG, elapsed time: --resume
continues from it), best.pt (the model with the lowest valid loss),
log.jsonl (one record per log line and per validation), and, at the end,
the exported model directory RUN/model (or --export-dir). The run ends at
--max-steps or when --max-minutes of training time are spent, whichever
comes first; with --time-schedule the cosine decay follows the time budget
instead of the step count, so a timed run still ends at the minimum rate.

Density control (--density-target R, see density.py for the reasoning):
the routers' activation rate in each training batch (the hard decision the
C engine makes) is held at or below a target by a Lagrange multiplier that
a PI controller sets from the measured rate (--density-lr, --density-kp),
acting through a penalty softplus(router logit) = -log(1 - pr1) with the
temperature's gradient stopped; the target
falls linearly from --density-start to R over the first --density-ramp of
the run's progress (time or steps, as the learning rate), with one
constraint on the mean over layers (--density-scope mean) or one per layer.
While the target is still ramping no checkpoint becomes best.pt, so the
exported model meets the final target. --init-act-bias B adds B to each
router's learned bias for u0 before training: training under the official
act_bias, folded into the weights. Validation records each layer's
activation rate on the valid split.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqboat_torch import checkpoint as ckmod  # noqa: E402
from seqboat_torch import config as cfgmod  # noqa: E402
from seqboat_torch import density as densmod  # noqa: E402
from seqboat_torch import export as exportmod  # noqa: E402
from seqboat_torch.model import SeqBoatLM  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    g = ap.add_argument_group("data")
    g.add_argument("--data", required=True, help="directory with train.npy, valid.npy")
    g.add_argument("--out", required=True, help="run directory (checkpoints, log, export)")
    g.add_argument("--valid-bytes", type=int,
                   help="UTF-8 bytes of the valid split (default: stats.json valid.bytes)")
    g = ap.add_argument_group("model (docs/model-format.md names)")
    g.add_argument("--vocab-size", type=int,
                   help="default: stats.json tokenizer.vocab_size, else max token + 1")
    g.add_argument("--embed-dim", type=int, default=256)
    g.add_argument("--z-dim", type=int, default=64)
    g.add_argument("--hidden-dim", type=int, default=512)
    g.add_argument("--n-dim", type=int, default=16)
    g.add_argument("--layers", type=int, default=6)
    g.add_argument("--window", type=int, default=64)
    g.add_argument("--ffn-dim", type=int, default=0)
    g.add_argument("--max-positions", type=int, default=1024)
    g.add_argument("--rel-pos-bias", choices=cfgmod.ARCH_CHOICES["rel_pos_bias"], default="rotary")
    g.add_argument("--attention", choices=cfgmod.ARCH_CHOICES["attention"], default="softmax")
    g.add_argument("--norm", choices=cfgmod.ARCH_CHOICES["norm"], default="layernorm")
    g.add_argument("--activation", choices=cfgmod.ARCH_CHOICES["activation"], default="silu")
    g.add_argument("--postnorm", action="store_true", help="normalize after each block")
    g.add_argument("--no-affine-final-norm", action="store_true")
    g.add_argument("--no-scale-embedding", action="store_true")
    g.add_argument("--untied", action="store_true", help="separate output projection")
    g.add_argument("--init-temp-scale", type=float, default=1.0,
                   help="router temperature at init = this * sqrt(D)")
    g.add_argument("--init-act-bias", type=float, default=0.0,
                   help="add this to every router's bias for u0 before training (also "
                        "to weights from --init-from): positive = fewer activations")
    g = ap.add_argument_group("density control (tools/seqboat_torch/density.py)")
    g.add_argument("--density-target", type=float, default=0.0,
                   help="hold the routers' activation rate at or below this fraction "
                        "(0: off)")
    g.add_argument("--density-scope", choices=densmod.SCOPES, default="mean",
                   help="one constraint on the mean over layers, or one per layer")
    g.add_argument("--density-ramp", type=float, default=0.3,
                   help="fraction of the run over which the target falls from "
                        "--density-start to --density-target")
    g.add_argument("--density-start", type=float, default=1.0)
    g.add_argument("--density-lr", type=float, default=0.05,
                   help="integral gain of the multipliers' controller: step per unit of "
                        "excess rate")
    g.add_argument("--density-kp", type=float, default=2.0,
                   help="proportional gain of the multipliers' controller")
    g = ap.add_argument_group("training")
    g.add_argument("--seq-len", type=int, default=512)
    g.add_argument("--batch-size", type=int, default=32, help="sequences per step per GPU")
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--min-lr", type=float, default=1e-4)
    g.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    g.add_argument("--max-steps", type=int, default=10000)
    g.add_argument("--stop-at-step", type=int, default=0,
                   help="end this invocation at this step (checkpointed; resume later) "
                        "without changing the schedule")
    g.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after this many wall-clock minutes of the training loop "
                        "(steps, validations, checkpoints; summed over resumed runs; "
                        "0: no limit), then validate, checkpoint and export")
    g.add_argument("--time-schedule", action="store_true",
                   help="cosine decay over --max-minutes instead of --max-steps")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.98)
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--precision", choices=["auto", "bf16", "f32"], default="auto",
                   help="auto: bf16 autocast on GPU, f32 on CPU")
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (torch 2)")
    g.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    g.add_argument("--init-from", help="start from this checkpoint's weights (best.pt or "
                   "last.pt of an earlier run, same architecture) with a fresh optimizer "
                   "and schedule: a second phase on other data")
    g = ap.add_argument_group("logging and checkpoints")
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--eval-every", type=int, default=500)
    g.add_argument("--save-every", type=int, default=500)
    g = ap.add_argument_group("export")
    g.add_argument("--export-dir", help="default RUN/model")
    g.add_argument("--export-dtype", choices=sorted(exportmod.DTYPES), default="f32")
    g.add_argument("--no-export", action="store_true")
    g.add_argument("--tokenizer", help="tokenizer file (default: DIR/tokenizer.model or DIR/dict.txt)")
    g.add_argument("--tokenizer-type", choices=sorted(exportmod.TOKENIZER_FILES))
    for k in ("bos", "eos", "pad", "unk"):
        g.add_argument("--%s-id" % k, type=int)
    g.add_argument("--name", help="provenance name in config.yaml")
    g.add_argument("--license", help="provenance license in config.yaml")
    g.add_argument("--source", help="provenance source in config.yaml")
    return ap.parse_args(argv)


# ---------------------------------------------------------------- setup

class Dist(object):
    """Rank bookkeeping; a single process when not launched by torchrun."""

    def __init__(self, device_arg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = (device_arg or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
        if want_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if want_cuda else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def all_sum(self, values):
        """Sums a list of floats over ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def broadcast_flag(self, flag):
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device)
        torch.distributed.broadcast(t, 0)
        return bool(t.item())

    def barrier(self):
        if self.world > 1:
            if self.device.type == "cuda":
                torch.distributed.barrier(device_ids=[self.local_rank])
            else:
                torch.distributed.barrier()

    def close(self):
        if self.world > 1:
            torch.distributed.destroy_process_group()


def log(msg):
    sys.stderr.write("train: %s\n" % msg)
    sys.stderr.flush()


def load_tokens(path):
    a = np.load(path, mmap_mode="r")
    if a.ndim != 1 or a.dtype not in (np.uint16, np.int32, np.int64, np.uint32):
        raise SystemExit("train: %s: expected a 1-D uint16/int32 array, got %s %s"
                         % (path, a.dtype, a.shape))
    return a


def read_stats(data_dir):
    p = os.path.join(data_dir, "stats.json")
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.load(f)


def tokenizer_settings(a, stats):
    """(settings dict for config.yaml, tokenizer file path or None)."""
    st = stats.get("tokenizer", {})
    tok = {}
    ttype = a.tokenizer_type
    path = a.tokenizer
    if path is None:
        for t, name in (("sentencepiece", "tokenizer.model"), ("fairseq", "dict.txt")):
            cand = os.path.join(a.data, name)
            if os.path.exists(cand):
                path, ttype = cand, ttype or t
                break
    if ttype is None and path is not None:
        ttype = "fairseq" if path.endswith(".txt") else "sentencepiece"
    if ttype:
        tok["type"] = ttype
    defaults = {"sentencepiece": {}, "fairseq": {"bos_id": 2, "eos_id": 2, "pad_id": 1,
                                                  "unk_id": 3}}.get(ttype, {})
    for k in ("bos", "eos", "pad", "unk"):
        v = getattr(a, k + "_id")
        if v is None:
            v = st.get(k + "_id", defaults.get(k + "_id"))
        if v is not None:
            tok[k + "_id"] = int(v)
    if path is not None:
        tok["file"] = os.path.abspath(path)
    return tok, path


def build_arch(a, vocab_size):
    return {
        "vocab_size": vocab_size, "embed_dim": a.embed_dim, "z_dim": a.z_dim,
        "hidden_dim": a.hidden_dim, "n_dim": a.n_dim, "layers": a.layers,
        "window": a.window, "ffn_dim": max(a.ffn_dim, 0), "max_positions": a.max_positions,
        "truncation_length": 0, "rel_pos_bias": a.rel_pos_bias, "attention": a.attention,
        "norm": a.norm, "activation": a.activation, "normalize_before": not a.postnorm,
        "affine_final_norm": not a.no_affine_final_norm,
        "scale_embedding": not a.no_scale_embedding, "tied_embeddings": not a.untied,
    }


def make_optimizer(model, a, device):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Matrices decay; gains, biases, EMA coefficients, the router's
        # temperature and the embedding do not.
        if p.dim() == 2 and "embed_tokens" not in name and ".move." not in name \
                and not name.endswith(("gamma", "beta")):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": a.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"lr": a.lr, "betas": (a.beta1, a.beta2), "eps": 1e-8}
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (TypeError, RuntimeError):
            pass
    return torch.optim.AdamW(groups, **kw)


def run_progress(a, step, elapsed_min):
    """How far the run is, in [0, 1]: by time with --time-schedule, else by step."""
    if a.time_schedule and a.max_minutes > 0:
        return min(max(elapsed_min / a.max_minutes, 0.0), 1.0)
    return min(max(step / max(1, a.max_steps), 0.0), 1.0)


def lr_at(a, step, elapsed_min):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    if a.time_schedule and a.max_minutes > 0:
        progress = elapsed_min / a.max_minutes
    else:
        progress = (step - a.warmup) / max(1, a.max_steps - a.warmup)
    progress = min(max(progress, 0.0), 1.0)
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1.0 + math.cos(math.pi * progress))


def sample_batch(train, a, step, micro, rank, device):
    """Random windows, reproducible from (seed, step, micro-step, rank)."""
    rng = np.random.default_rng([a.seed, step, micro, rank])
    n = len(train) - a.seq_len - 1
    starts = rng.integers(0, n + 1, size=a.batch_size)
    idx = starts[:, None] + np.arange(a.seq_len + 1)[None, :]
    chunk = torch.from_numpy(np.asarray(train[idx], dtype=np.int64))
    chunk = chunk.to(device, non_blocking=True)
    return chunk[:, :-1], chunk[:, 1:]


def autocast(device, enabled):
    if not enabled:
        return _Null()
    if hasattr(torch, "autocast"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.cuda.amp.autocast(dtype=torch.bfloat16)


class _Null(object):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@torch.no_grad()
def evaluate(model, valid, a, dist, use_bf16, bos_id):
    """Returns (mean loss in nats per counted target, total bits, counted,
    activation rate per layer)."""
    model.eval()
    T = a.seq_len
    n_pred = len(valid) - 1
    windows = [(s, min(T, n_pred - s)) for s in range(0, n_pred, T)]
    mine = windows[dist.rank::dist.world]
    total_nats, counted = 0.0, 0
    act_sum, act_n = None, 0
    B = max(1, a.batch_size)
    i = 0
    while i < len(mine):
        # Same-length windows share a batch; the last one may be shorter.
        length = mine[i][1]
        group = [w for w in mine[i:i + B] if w[1] == length]
        i += len(group)
        rows = np.stack([np.asarray(valid[s:s + length + 1], dtype=np.int64) for s, _ in group])
        x = torch.from_numpy(rows[:, :-1]).to(dist.device)
        y = torch.from_numpy(rows[:, 1:]).to(dist.device)
        with autocast(dist.device, use_bf16):
            logits, extra = model(x, return_router=True)
        acts = [float(act.float().sum()) for act in extra["act"]]
        act_sum = acts if act_sum is None else [s + v for s, v in zip(act_sum, acts)]
        act_n += x.numel()
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                              reduction="none")
        keep = y.reshape(-1) != bos_id if bos_id is not None and bos_id >= 0 else \
            torch.ones_like(nll, dtype=torch.bool)
        total_nats += float(nll[keep].double().sum())
        counted += int(keep.sum())
    L = len(act_sum) if act_sum is not None else len(_unwrap(model).layers)
    sums = dist.all_sum([total_nats, float(counted), float(act_n)]
                        + (act_sum or [0.0] * L))
    total_nats, counted, act_n = sums[0], sums[1], sums[2]
    rates = [v / max(act_n, 1.0) for v in sums[3:]]
    model.train()
    return total_nats / max(counted, 1), total_nats / math.log(2), int(counted), rates


def _unwrap(model):
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def rng_state(device):
    st = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st, device):
    torch.set_rng_state(st["cpu"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_own(path):
    """Our own checkpoints hold only containers, numbers, strings and
    tensors: read through the same allow-list as official ones."""
    return ckmod.safe_load(path)


class JsonLog(object):
    def __init__(self, path, enabled):
        self.f = open(path, "a") if enabled else None

    def write(self, rec):
        if self.f is not None:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self):
        if self.f is not None:
            self.f.close()


# ---------------------------------------------------------------- main

def main(argv=None):
    a = parse_args(argv)
    dist = Dist(a.device)
    torch.manual_seed(a.seed * 1000 + dist.rank)
    use_bf16 = a.precision == "bf16" or (a.precision == "auto" and dist.device.type == "cuda")
    if dist.main:
        os.makedirs(a.out, exist_ok=True)
    dist.barrier()

    train = load_tokens(os.path.join(a.data, "train.npy"))
    valid = load_tokens(os.path.join(a.data, "valid.npy"))
    stats = read_stats(a.data)
    if len(train) < a.seq_len + 2:
        raise SystemExit("train: train.npy has %d tokens, fewer than --seq-len + 2" % len(train))
    tok, tok_path = tokenizer_settings(a, stats)
    vocab = a.vocab_size or stats.get("tokenizer", {}).get("vocab_size") or \
        int(max(int(train.max()), int(valid.max())) + 1)
    if int(train.max()) >= vocab or int(valid.max()) >= vocab:
        raise SystemExit("train: token ids reach %d but the vocabulary has %d entries"
                         % (max(int(train.max()), int(valid.max())), vocab))
    valid_bytes = a.valid_bytes or stats.get("valid", {}).get("bytes")
    bos_id = tok.get("bos_id")

    last_path = os.path.join(a.out, "last.pt")
    best_path = os.path.join(a.out, "best.pt")
    resume = load_own(last_path) if a.resume and os.path.exists(last_path) else None
    init = load_own(a.init_from) if a.init_from and not resume else None
    arch = resume["arch"] if resume else init["arch"] if init else build_arch(a, int(vocab))
    cfgmod.validate({"format": 1, "architecture": arch,
                     "tokenizer": {"type": "sentencepiece", "file": "x", "bos_id": -1,
                                   "eos_id": -1, "pad_id": -1, "unk_id": -1}})
    pad = tok.get("pad_id")
    model = SeqBoatLM(arch, dropout=a.dropout, padding_idx=pad,
                      init_temp_scale=a.init_temp_scale).to(dist.device)
    opt = make_optimizer(model, a, dist.device)
    step, elapsed, best = 0, 0.0, float("inf")
    density = None
    if a.density_target > 0:
        try:
            density = densmod.DensityControl(a.density_target, arch["layers"], a.density_scope,
                                             a.density_ramp, a.density_start, a.density_lr,
                                             a.density_kp)
        except ValueError as e:
            raise SystemExit("train: %s" % e)
    if init:
        model.load_state_dict(init["model"])
        if dist.main:
            log("weights from %s (its step %s)" % (a.init_from, init.get("step")))
        if density is not None and init.get("density"):
            # a later phase of a density-controlled run goes on from its multipliers
            try:
                density.load_state_dict(init["density"])
                if dist.main:
                    log("density multipliers from %s: %s" % (a.init_from, density.lam))
            except ValueError as e:
                if dist.main:
                    log("density multipliers not taken from %s: %s" % (a.init_from, e))
    if a.init_act_bias and not resume:
        with torch.no_grad():
            for layer in model.layers:
                layer.slag_layer.hx_proj.bias[0] += a.init_act_bias
    if resume:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        step, elapsed, best = resume["step"], resume["elapsed"], resume["best_valid"]
        if density is not None and resume.get("density"):
            density.load_state_dict(resume["density"])
        rngs = resume.get("rng") or []
        if len(rngs) == dist.world:
            set_rng_state(rngs[dist.rank], dist.device)
        if dist.main:
            log("resumed from %s at step %d (%.1f min trained, best valid %.4f)"
                % (last_path, step, elapsed / 60, best))
    nparams = sum(p.numel() for p in model.parameters())
    if dist.main:
        log("model: %d parameters, arch %s" % (nparams, json.dumps(arch)))
        log("data: %d train tokens, %d valid tokens, vocab %d, valid bytes %s"
            % (len(train), len(valid), vocab, valid_bytes))
    fwd = model
    if a.compile and hasattr(torch, "compile"):
        fwd = torch.compile(model)
    if dist.world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
    jlog = JsonLog(os.path.join(a.out, "log.jsonl"), dist.main)

    def checkpoint(path, kind):
        rngs = [None] * dist.world
        if dist.world > 1:
            torch.distributed.all_gather_object(rngs, rng_state(dist.device))
        else:
            rngs = [rng_state(dist.device)]
        if not dist.main:
            return
        # RNG states move to the CPU so the file loads anywhere.
        rngs = [{k: v.cpu() for k, v in r.items()} for r in rngs]
        obj = {"model": model.state_dict(), "arch": arch, "step": step, "elapsed": elapsed,
               "best_valid": best, "tokenizer": tok, "args": vars(a), "rng": rngs}
        if density is not None:
            obj["density"] = density.state_dict()
        if kind == "last":
            obj["optimizer"] = opt.state_dict()
        save_atomic(obj, path)

    def validate_now():
        nonlocal best
        loss, bits, counted, rates = evaluate(fwd if dist.world == 1 else model, valid, a, dist,
                                              use_bf16, bos_id)
        rec = {"type": "valid", "step": step, "loss": loss, "ppl": math.exp(min(loss, 50)),
               "tokens": counted, "minutes": elapsed / 60, "act": rates}
        if valid_bytes:
            rec["bpb"] = bits / valid_bytes
        # While the density target is still falling, a checkpoint is denser
        # than the run's target: it cannot become the model to export.
        eligible = density is None or density.ramp_done(run_progress(a, step, elapsed / 60))
        rec["eligible"] = eligible
        improved = eligible and loss < best
        if improved:
            best = loss
        if dist.main:
            log("step %d valid loss %.4f ppl %.2f%s act %s%s" % (
                step, loss, rec["ppl"], " bpb %.4f" % rec["bpb"] if "bpb" in rec else "",
                "/".join("%.2f" % f for f in rates), " (best)" if improved else ""))
            jlog.write(rec)
        if improved:
            # best.pt holds weights only: the model to export.
            if dist.main:
                obj = {"model": model.state_dict(), "arch": arch, "step": step,
                       "valid_loss": loss, "tokenizer": tok, "args": vars(a)}
                if density is not None:
                    obj["density"] = density.state_dict()
                save_atomic(obj, best_path)
        return loss

    model.train()
    t_last = time.time()
    tokens_since = 0
    loss_sum, loss_n = 0.0, 0
    stop = False
    budget = a.max_minutes * 60.0
    base_elapsed, t_start = elapsed, time.time()
    while step < a.max_steps and not stop:
        lr = lr_at(a, step, elapsed / 60.0)
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        opt.zero_grad(set_to_none=True)
        acts = None
        for micro in range(a.grad_accum):
            x, y = sample_batch(train, a, step, micro, dist.rank, dist.device)
            sync = micro == a.grad_accum - 1 or dist.world == 1
            ctx = fwd.no_sync() if (not sync and dist.world > 1) else _Null()
            with ctx:
                with autocast(dist.device, use_bf16):
                    logits, extra = fwd(x, return_router=True)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                       y.reshape(-1))
                total = loss
                if density is not None:
                    total = loss + density.penalty(extra["logit"])
                (total / a.grad_accum).backward()
            loss_sum += float(loss.detach())
            loss_n += 1
            micro_acts = [float(act.float().mean()) for act in extra["act"]]
            acts = micro_acts if acts is None else [s + v for s, v in zip(acts, micro_acts)]
            tokens_since += x.numel() * dist.world
        acts = [v / a.grad_accum for v in acts]
        if dist.world > 1:
            acts = [v / dist.world for v in dist.all_sum(acts)]
        if a.clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip))
        else:
            gnorm = float("nan")
        opt.step()
        step += 1
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        elapsed = base_elapsed + time.time() - t_start
        if density is not None:
            density.update(acts, run_progress(a, step, elapsed / 60))
        if step % a.log_every == 0 or step == 1:
            mean_loss = dist.all_sum([loss_sum / max(loss_n, 1)])[0] / dist.world
            now = time.time()
            rate = tokens_since / max(now - t_last, 1e-9)
            if dist.main:
                dens = ""
                rec = {"type": "train", "step": step, "loss": mean_loss, "lr": lr,
                       "grad_norm": gnorm, "tokens_per_s": rate, "act": acts,
                       "minutes": elapsed / 60}
                if density is not None:
                    tgt = density.target_at(run_progress(a, step, elapsed / 60))
                    rec.update({"density_target": tgt, "density_lambda": list(density.lam)})
                    dens = " target %.3f lambda %s" % (
                        tgt, "/".join("%.3g" % v for v in density.lam))
                log("step %d loss %.4f lr %.2e gnorm %.3f %.0f tok/s act %s%s %.1f min"
                    % (step, mean_loss, lr, gnorm, rate,
                       "/".join("%.2f" % f for f in acts), dens, elapsed / 60))
                jlog.write(rec)
            t_last, tokens_since, loss_sum, loss_n = now, 0, 0.0, 0
        last_loss = float(loss.detach())
        if not math.isfinite(last_loss):
            raise SystemExit("train: loss is %s at step %d" % (last_loss, step))
        stop = dist.broadcast_flag((budget > 0 and elapsed >= budget)
                                   or (a.stop_at_step > 0 and step >= a.stop_at_step))
        if step % a.eval_every == 0 or step == a.max_steps or stop:
            validate_now()
        if step % a.save_every == 0 or step == a.max_steps or stop:
            checkpoint(last_path, "last")
    paused = a.stop_at_step > 0 and step >= a.stop_at_step and step < a.max_steps \
        and not (budget > 0 and elapsed >= budget)
    if dist.main:
        log("finished at step %d after %.1f min; best valid loss %.4f"
            % (step, elapsed / 60, best))
    jlog.close()
    if paused and dist.main:
        log("paused at step %d by --stop-at-step: continue with --resume" % step)
    if not a.no_export and not paused and dist.main:
        if tok_path is None or any(k not in tok for k in ("type", "bos_id", "eos_id", "pad_id",
                                                           "unk_id")):
            log("not exporting: tokenizer file or ids unknown (see --tokenizer and --*-id)")
        else:
            best_ck = load_own(best_path) if os.path.exists(best_path) else None
            weights = best_ck["model"] if best_ck else model.state_dict()
            src = a.source or ("trained by tools/seqboat_torch/train.py: %d steps, best valid "
                               "loss %.4f at step %s" % (step, best,
                                                          best_ck["step"] if best_ck else step))
            out = a.export_dir or os.path.join(a.out, "model")
            exportmod.export(weights, arch, out, tok, tok_path, a.export_dtype,
                             {"name": a.name, "license": a.license, "source": src},
                             force=True)
            log("exported %s (%s)" % (out, a.export_dtype))
    dist.barrier()
    dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
