/*
 * backend.h - the seam between the forward pass's orchestration
 * (lib/forward.c) and the code that does its arithmetic (a backend).
 *
 * Not part of the public API. The CPU backend (lib/cpu/) is the first
 * implementation; a second one (CUDA) adds its own directory and one line
 * to the registry in lib/backend.c, and edits nothing of the CPU code.
 *
 * Who does what
 * -------------
 * Backend-independent (forward.c, state.c, model.c):
 *   - checking arguments: token ids in [0, V), states of the context's model
 *     and placement, B <= the batch capacity; errors are set here;
 *   - cutting a call into blocks of at most `max_rows` rows (sb_rows below)
 *     of one of three kinds:
 *       ONE_STATE  rows 0..T-1 are consecutive tokens of one state (a prefill
 *                  piece, or a single decoded token): one_state is true;
 *       DISTINCT   row t is one token of state t, and no state appears twice
 *                  (a decode batch; a batch that names a state twice is cut
 *                  into several blocks, in order, by the orchestration):
 *                  distinct is true (T == 1 is both ONE_STATE and DISTINCT);
 *       RUNS       several prompts at once (sb_prefill_batch): the rows of
 *                  each state are consecutive and in order, no state has
 *                  two runs; one_state and distinct are both false (even
 *                  for a single run).
 *     In DISTINCT and RUNS blocks each row's numbers must not depend on
 *     the other sequences in the block (the CPU backend sums every element
 *     as its one-row kernels do), so that what `complete` generates is the
 *     same at any batch size;
 *   - each row's position: pos[t] = the state's n_tokens before the row
 *     (s->n_tokens lives on the host in struct sb_state and the orchestration
 *     advances it; backends never write it);
 *   - where the optional outputs (sb_outputs: act, hidden, logits) land:
 *     the backend gets plain contiguous host pointers for its rows;
 *   - the state's layout (sb_state_layout_of), its serialized format
 *     (magic, version, fingerprint, then the block's bytes), the checks of
 *     untrusted state files, and the ring's slot arithmetic (lib/ring.h).
 * The backend:
 *   - its context: its threads, its copy of the weights if it keeps one
 *     (it may read the model's sb_layer / sb_mat of internal.h, which point
 *     into the mmapped file, F32/F16/BF16/I8+scales), and all scratch,
 *     sized once at ctx_new for `max_rows` rows: compute ops allocate
 *     nothing (tests/test-engine.c counts host allocations per token);
 *   - the storage of states placed on it (state_* ops);
 *   - all arithmetic of a block: embedding, per layer the norms, EMA,
 *     router, the gated attention unit of the activated rows (projections,
 *     q/k affine, rotary, ring push, windowed attention, h_proj), residuals,
 *     FFN, and the final norm + output projection. Every BLAS call is in a
 *     backend.
 *
 * The state block
 * ---------------
 * A state is one block of s->lay.bytes bytes in the backend's memory, laid
 * out exactly as sb_state_layout_of() says (byte offsets, 8-aligned):
 *   n_act     uint64_t (L)           activated tokens per layer
 *   ring_len  int32_t  (L)           entries held, 0..W+1
 *   ring_head int32_t  (L)           slot of the oldest entry, 0..W
 *   ring_pos  int64_t  (L, W+1)      raw position of the token in each slot
 *   h         float    (L, D, N)     EMA state, h[l][d][n]
 *   ring_k    float    (L, W+1, Z)   rotated keys, by slot
 *   ring_v    float    (L, W+1, H)   values, by slot
 * All zero bytes is the empty state. Because every backend keeps this one
 * layout, moving a state between host and device is a byte copy
 * (state_download / state_upload), and saving, loading, cloning and
 * snapshots work for every placement through state.c alone. n_tokens is
 * not in the block (it is in struct sb_state, on the host).
 *
 * The ring: entry e (0 = oldest .. len-1 = newest) of layer l is in slot
 * sb_ring_slot(head, e, W+1); a push takes sb_ring_push(&len, &head, W+1)
 * as its slot (lib/ring.h, usable from device code).
 *
 * What a block computes (docs/computation.md sections 1-4), row by row in row order as T
 * calls of token-by-token decoding would, to the parity tests' tolerance
 * (logits and hidden within 1e-4 of the official fixtures, every router
 * decision equal):
 *   x = embed[token] * embed_scale
 *   per layer l:
 *     xn = Norm(x) (pre-norm) or x;  EMA over the rows in order -> mx
 *     (h of the row's state updated), mx = act(mx)
 *     hxu = hx_proj(mx) + b: u0, u1 = hxu[0], hxu[1], hx = hxu[2..]
 *     router: a0 = (u0 + act_bias) * inv_tau, a1 = u1 * inv_tau,
 *       p1 = softmax(a0, a1)[1], p0 = 1 - p1 computed as the other softmax
 *       term; activated iff p1 > p0 (a tie is NOT activated). An activated
 *       row increments its state's n_act[l] and writes act[t] = 1, else 0.
 *     for the activated rows (gathered: only they go through mx_proj and
 *       h_proj): z,g,v = act(mx_proj(mx) + b); q = z*gq + bq, k = z*gk + bk,
 *       rotary at pos[t] when rel_pos is rotary; (k, v, pos) pushed into
 *       the state's ring BEFORE the row attends (a row sees itself);
 *       o = attention of q over the ring (softmax scale 1/sqrt(Z), or
 *       relu2/laplace with scale 1/W, plus the simple relative bias);
 *       att = pr1 * h_proj(o * g) + pr1 * b
 *     x = act(hx + att + x) (att = 0 for rows not activated); post-norm:
 *     x = Norm(x); optional FFN: x = x + fc2(act(fc1(Norm(x)))), post-norm
 *   logits = out_proj(FinalNorm(x)) (FinalNorm only with pre-norm)
 * The model's fields (inv_tau, ema_q/pb/g, omega, gq/gk/bq/bk, rel_bias,
 * embed_scale, ...) are in internal.h, already precomputed at load.
 */
#ifndef SB_BACKEND_H
#define SB_BACKEND_H

#include "internal.h"
#include "ring.h"

/* A backend's context (its own struct, opaque to the orchestration). */
typedef struct sb_bctx sb_bctx;

/* One block of rows, built by the orchestration for each op of a block.
 * All pointers are host memory, valid for the block's ops. */
typedef struct sb_rows {
	int T;                        /* rows, 1 <= T <= max_rows */
	sb_state *const *states;      /* (T) the state row t is read into */
	const int32_t *tokens;        /* (T) ids, checked to be in [0, V) */
	const int64_t *pos;           /* (T) each row's position */
	bool one_state;               /* ONE_STATE: states[t] == states[0] */
	bool distinct;                /* DISTINCT: no state twice (T == 1 is both);
	                               * neither: RUNS */
	float act_bias;               /* router shift (docs/computation.md section 2) */
} sb_rows;

/* What ctx_new reports back. */
typedef struct sb_backend_info {
	int max_rows;                 /* rows per block it accepts, >= max_batch */
	int n_threads;                /* host threads it uses */
	char device_name[128];        /* the device's own name ("NVIDIA H200"), or "" */
	bool runs;                    /* takes RUNS blocks and any selection of
	                               * logits rows; false (the zero value): the
	                               * orchestration gives it only ONE_STATE and
	                               * DISTINCT blocks, and asks the logits of
	                               * rows t0..T-1 (sb_prefill_batch then reads
	                               * each prompt as sb_prefill does) */
} sb_backend_info;

typedef struct sb_backend {
	const char *name;             /* "cpu", "cuda": the device string's prefix */

	/* ---- contexts ---- */

	/* A context on device `device` (the N of "cuda:N"; 0 for the CPU) for
	 * model m: threads, weights, scratch for p->max_batch rows or more
	 * (p->max_batch is >= 1 when called; the backend may accept more rows,
	 * e.g. the CPU prefills in blocks of 512). Fills *info. Returns 0 or a
	 * negative sb_status with err set (SB_ERR_NOMEM, SB_ERR_DEVICE,
	 * SB_ERR_UNSUPPORTED for a model it cannot run). */
	int (*ctx_new)(const sb_model *m, const sb_ctx_params *p, int device, sb_bctx **out,
	               sb_backend_info *info, sb_error *err);
	void (*ctx_free)(sb_bctx *b);   /* accepts NULL */

	/* ---- states (no context needed: a state may outlive every context,
	 * and several contexts on one device share states) ---- */

	/* s->m, s->lay, s->device and s->be are set; allocates s->block
	 * (s->lay.bytes, in this backend's memory, all zero) and optionally
	 * s->priv. Returns 0 or a negative sb_status with err set. */
	int (*state_alloc)(sb_state *s, sb_error *err);
	/* Frees what state_alloc allocated (not s itself). */
	void (*state_free)(sb_state *s);
	/* Sets the whole block to zero bytes. */
	int (*state_zero)(sb_state *s);
	/* dst's block = src's block; both on this backend and device. */
	int (*state_copy)(sb_state *dst, const sb_state *src);
	/* Bytes [off, off+len) of the block to host memory, and back. Used for
	 * serialization, cross-placement copies and the small counters
	 * (sb_state_n_activated, the ring checks of a loaded file). */
	int (*state_download)(const sb_state *s, size_t off, size_t len, void *host);
	int (*state_upload)(sb_state *s, size_t off, size_t len, const void *host);

	/* ---- compute: a block is embed, layer 0..L-1, then optionally
	 * logits, then sync. Each returns 0 or a negative sb_status with err
	 * set (a device failure: SB_ERR_DEVICE); after a failure the block's
	 * states are unspecified (the orchestration says so to the caller). ---- */

	/* x[t] = embed[tokens[t]] * embed_scale for the block's rows. */
	int (*embed)(sb_bctx *b, const sb_rows *r, sb_error *err);
	/* Layer l over the block's rows, updating each row's state (EMA h,
	 * n_act[l], ring). act: NULL or (T) host bytes, act[t] = router
	 * decision. hidden: NULL or (T, D) host floats, the layer's output x. */
	int (*layer)(sb_bctx *b, const sb_rows *r, int l, uint8_t *act, float *hidden,
	             sb_error *err);
	/* Logits of the n selected rows sel[0] < sel[1] < ... (indices into
	 * the block) into dst (n, V) host floats, in that order: final norm
	 * (pre-norm models) and output projection. Called at most once per
	 * block, after the last layer; it may overwrite the block's
	 * activations. (sb_prefill asks for all rows or the last one; a
	 * decode batch for all; sb_prefill_batch for each prompt's last.) */
	int (*logits)(sb_bctx *b, const sb_rows *r, const int *sel, int n, float *dst,
	              sb_error *err);
	/* Waits until every host output of the block is written and every
	 * state update is complete. May be NULL (synchronous backends). */
	int (*sync)(sb_bctx *b, sb_error *err);
} sb_backend;

/* The CPU backend (lib/cpu/), always present; host states use it. */
extern const sb_backend sb_backend_cpu;
#ifdef SB_HAVE_CUDA
/* The CUDA backend (lib/cuda/), built with -Dcuda. */
extern const sb_backend sb_backend_cuda;
#endif

/* The backend for a device string ("cpu", "cuda", "cuda:1"; NULL = "cpu")
 * and its device index, or NULL with err set (SB_ERR_UNSUPPORTED: not built
 * in; SB_ERR_ARG: malformed). lib/backend.c. */
const sb_backend *sb_backend_find(const char *device, int *index, sb_error *err);

/* "cpu", or "NAME:INDEX" for another backend, into buf. */
void sb_backend_device_name(const sb_backend *be, int device, char *buf, size_t cap);

/* A new zero state kept by backend be on its device (state.c);
 * sb_state_new is sb_state_new_on(m, &sb_backend_cpu, 0, err). */
sb_state *sb_state_new_on(const sb_model *m, const sb_backend *be, int device, sb_error *err);

#endif /* SB_BACKEND_H */
