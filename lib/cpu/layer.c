/*
 * layer.c - the CPU backend's arithmetic of a block (docs/computation.md sections 1-4).
 *
 * A block is T "rows": row t is one token read into state S[t]. A prefill
 * block is T consecutive tokens of one state; a batched decode block is one
 * token for each of B states (backend.h). Rows are applied to their states
 * in order, so the EMA scan and the window ring see tokens exactly as
 * token-by-token decoding does, while the projections of all rows (and the
 * attention unit of only the activated rows, gathered) run as
 * matrix-matrix products.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "pool.h"

/* A prefill block's attention runs as two matrix products over the ring
 * plus the block (a band of the score matrix is wasted, but sgemm is
 * several times faster than row-by-row dot products) from a ring of
 * SB_CPU_BATCHED_ATTN_MIN_W1 and this many activated rows on. */
#define BATCHED_ATTN_MIN_ROWS 16
/* A decoded token's attention over a ring this long is split over threads. */
#define PARALLEL_ATTN_MIN 128

/* The state of row t of the current block, and its token's position. */
#define ROW_STATE(x, t) ((x)->rows->states[t])
#define ROW_POS(x, t) ((x)->rows->pos[t])

/* Y (T, W.rows) = X W^T + bias. A block of several sequences (DISTINCT or
 * RUNS) sums each element as a single decoded row does, so that what a
 * sequence computes never depends on which others share its block; a
 * prefill block of one state takes OpenBLAS's sgemm. */
static void matmul(sb_bctx *x, float *Y, const float *X, int T, const sb_mat *W,
                   const float *bias)
{
	if (!x->rows->one_state)
		sb_matmul_exact(Y, X, T, W, bias, x->ws, x->pool);
	else
		sb_matmul(Y, X, T, W, bias, x->ws, x->pool);
}

/* Row-wise work (norms, EMA, activations) is split over the pool from this
 * many rows on; below it the dispatch would cost more than it saves. */
#define PAR_MIN_ROWS 8

typedef struct rows_fn_job {
	sb_bctx *x;
	const sb_layer *ly;
	int l, T;
	void (*fn)(struct rows_fn_job *j, int begin, int end);
	int n;                 /* items to split: rows, channels or floats */
	float *p;              /* activate: the floats */
	const sb_norm *norm;   /* prenorm / residual */
	bool ffn;              /* residual: the FFN's (x += f) or the block's */
} rows_fn_job;

static void rows_fn_part(void *arg, int ith, int nth)
{
	rows_fn_job *j = arg;
	/* ranges of 16 items, so threads do not share cache lines */
	int blocks = (j->n + 15) / 16;
	int b0 = (int)((long)blocks * ith / nth), b1 = (int)((long)blocks * (ith + 1) / nth);
	int e = b1 * 16 < j->n ? b1 * 16 : j->n;
	if (b0 * 16 < e)
		j->fn(j, b0 * 16, e);
}

/* Runs j->fn over [0, j->n), split over the pool when there are enough
 * rows to be worth it. */
static void run_rows(sb_bctx *x, rows_fn_job *j)
{
	if (j->T >= PAR_MIN_ROWS)
		sb_pool_run(x->pool, rows_fn_part, j);
	else
		j->fn(j, 0, j->n);
}

/* Asks for bytes [p, p + n) to be brought into the L2 (the rows of a
 * batch are in distinct states, so their data comes from memory, in
 * streams too short for the hardware's prefetcher to get going). */
static void prefetch_bytes(const void *p, size_t n)
{
	for (size_t o = 0; o < n; o += 64)
		__builtin_prefetch((const char *)p + o, 0, 2);
}

/* Multi-head damped EMA over the rows, in order (docs/computation.md section 2):
 * h = q*h + p*beta*xn;  mx = sum_n h*gamma/sqrt(N) + omega*xn. Channels are
 * independent, so threads take channel ranges and scan every row. */
static void ema_channels(rows_fn_job *j, int d0, int d1)
{
	sb_bctx *x = j->x;
	const sb_layer *ly = j->ly;
	const int D = x->m->cfg.embed_dim, N = x->m->cfg.n_dim;
	const bool distinct = x->rows->distinct;
	for (int t = 0; t < j->T; t++) {
		if (distinct && t + 1 < j->T)
			prefetch_bytes(st_h(ROW_STATE(x, t + 1)) + ((size_t)j->l * D + (size_t)d0) * N,
			               (size_t)(d1 - d0) * N * sizeof(float));
		sb_ema_row(st_h(ROW_STATE(x, t)) + (size_t)j->l * D * N, ly->ema_q, ly->ema_pb, ly->ema_g,
		           ly->omega, x->xn + (size_t)t * D, x->mx + (size_t)t * D, d0, d1, N);
	}
}

static void activate_range(rows_fn_job *j, int i0, int i1)
{
	sb_activate(j->x->m->cfg.activation, j->p + i0, (size_t)(i1 - i0));
}

/* The model's activation over n floats of T rows. */
static void activate_rows(sb_bctx *x, float *p, int T, size_t n)
{
	rows_fn_job j = {.x = x, .T = T, .fn = activate_range, .n = (int)n, .p = p};
	run_rows(x, &j);
}

static void ema_rows(sb_bctx *x, const sb_layer *ly, int l, int T)
{
	rows_fn_job j = {.x = x, .ly = ly, .l = l, .T = T, .fn = ema_channels,
	                 .n = x->m->cfg.embed_dim};
	run_rows(x, &j);
	activate_rows(x, x->mx, T, (size_t)T * x->m->cfg.embed_dim);
}

/* xn = Norm(x) before a sublayer (pre-norm), or a copy (post-norm). */
static void prenorm_range(rows_fn_job *j, int t0, int t1)
{
	const sb_config *c = &j->x->m->cfg;
	const int D = c->embed_dim;
	float *xi = j->x->x + (size_t)t0 * D, *xn = j->x->xn + (size_t)t0 * D;
	if (c->normalize_before)
		sb_norm_rows(j->norm, xn, xi, t1 - t0, D);
	else
		memcpy(xn, xi, (size_t)(t1 - t0) * D * sizeof(float));
}

/* The block: x = act(hx + att + x), or the FFN: x = f + x; then the
 * post-norm. */
static void residual_range(rows_fn_job *j, int t0, int t1)
{
	sb_bctx *x = j->x;
	const sb_config *c = &x->m->cfg;
	const int D = c->embed_dim, D2 = 2 + D;
	for (int t = t0; t < t1; t++) {
		float *xi = x->x + (size_t)t * D;
		if (j->ffn) {
			const float *f = x->att + (size_t)t * D;
			for (int d = 0; d < D; d++)
				xi[d] += f[d];
		} else {
			const float *hx = x->hxu + (size_t)t * D2 + 2;
			/* the attention output (h_proj) scaled by the router's pr1 */
			const float *att = x->arow[t] >= 0 ? x->att + (size_t)x->arow[t] * D : NULL;
			const float p = x->pr1[t];
			for (int d = 0; d < D; d++)
				xi[d] = hx[d] + (att ? att[d] * p : 0.0f) + xi[d];
			sb_activate(c->activation, xi, (size_t)D);
		}
		if (!c->normalize_before) {
			float *tmp = x->xn + (size_t)t * D;
			sb_norm_apply(j->norm, tmp, xi, D);
			memcpy(xi, tmp, (size_t)D * sizeof(float));
		}
	}
}

/* Pushes (k, v, pos) into a layer's ring, dropping the oldest entry when
 * it already holds W+1. */
static void ring_push(const sb_config *c, sb_state *s, int l, const float *k,
                      const float *v, int64_t pos)
{
	const int W1 = c->window + 1, Z = c->z_dim, H = c->hidden_dim;
	int slot = sb_ring_push(st_ring_len(s) + l, st_ring_head(s) + l, W1);
	int32_t *dirty = ((sb_cpu_state *)s->priv)->dirty + l;
	if (slot >= *dirty)
		*dirty = slot + 1;
	size_t e = (size_t)l * W1 + (size_t)slot;
	memcpy(st_ring_k(s) + e * Z, k, (size_t)Z * sizeof(float));
	memcpy(st_ring_v(s) + e * H, v, (size_t)H * sizeof(float));
	st_ring_pos(s)[e] = pos;
}

/* Turns one query's scores a[0..n) (max mxs) into attention weights. */
static void attn_weights(sb_attn_kind kind, float *a, int n, float mxs)
{
	switch (kind) {
	case SB_ATTN_SOFTMAX: {
		float sum = 0.0f;
		for (int e = 0; e < n; e++) {
			a[e] = expf(a[e] - mxs);
			sum += a[e];
		}
		for (int e = 0; e < n; e++)
			a[e] /= sum;
		break;
	}
	case SB_ATTN_RELU2:
		for (int e = 0; e < n; e++)
			a[e] = a[e] > 0.0f ? a[e] * a[e] : 0.0f;
		break;
	case SB_ATTN_LAPLACE: {
		/* fairseq's laplace with mu = 0.707107, sigma = 0.282095. */
		const float mu = 0.707107f, inv = 1.0f / (0.282095f * sqrtf(2.0f));
		for (int e = 0; e < n; e++)
			a[e] = 0.5f * (1.0f + erff((a[e] - mu) * inv));
		break;
	}
	}
}

/* The learned relative bias b(t, t_j) of docs/computation.md section 2, raw distance. */
static inline float rel_bias(const sb_layer *ly, int M, int64_t pos_k, int64_t pos_q)
{
	int64_t idx = (int64_t)M - 1 + pos_k - pos_q;
	if (idx < 0)
		idx = 0;
	if (idx > 2 * (int64_t)M - 2)
		idx = 2 * (int64_t)M - 2;
	return ly->rel_bias[idx];
}

/* One query against ring entries [e0, e1): unnormalized softmax weights
 * (exp(s - local max)) or final relu2/laplace weights, accumulated into
 * og (H). Returns the local max and *sum the weights' sum, so that parts
 * computed by different threads merge exactly as flash-decoding does. */
typedef struct attn_job {
	sb_bctx *x;
	const sb_layer *ly;
	int l;
	sb_state *s;
	const float *q;
	int64_t pos;
	float part_max[SB_MAX_THREADS];
	float part_sum[SB_MAX_THREADS];
} attn_job;

static void attend_range(attn_job *j, int e0, int e1, float *a, float *og, float *mx_out,
                         float *sum_out)
{
	const sb_config *c = &j->x->m->cfg;
	const int W1 = c->window + 1, Z = c->z_dim, H = c->hidden_dim, M = c->max_positions;
	const int l = j->l, head = st_ring_head(j->s)[l];
	const float *K = st_ring_k(j->s) + (size_t)l * W1 * Z;   // (W+1, Z)
	const float *Vv = st_ring_v(j->s) + (size_t)l * W1 * H;  // (W+1, H)
	const int64_t *P = st_ring_pos(j->s) + (size_t)l * W1;   // (W+1)
	const float scale = c->attention == SB_ATTN_SOFTMAX ? 1.0f / sqrtf((float)Z)
	                                                    : 1.0f / (float)c->window;
	float mxs = -INFINITY, sum = 0.0f;
	memset(og, 0, (size_t)H * sizeof(float));
	sb_ring_dots(j->q, K, Z, W1, head, e0, e1, scale, a);
	for (int e = e0; e < e1; e++) {
		float sc = a[e - e0];
		if (j->ly->rel_bias)
			a[e - e0] = sc += rel_bias(j->ly, M, P[sb_ring_slot(head, e, W1)], j->pos);
		if (sc > mxs)
			mxs = sc;
	}
	if (c->attention == SB_ATTN_SOFTMAX) {
		for (int e = 0; e < e1 - e0; e++) {
			a[e] = expf(a[e] - mxs);
			sum += a[e];
		}
	} else {
		attn_weights(c->attention, a, e1 - e0, mxs);
	}
	sb_ring_accum(og, a, Vv, H, W1, head, e0, e1);
	*mx_out = mxs;
	*sum_out = sum;
}

static void attend_part(void *arg, int ith, int nth)
{
	attn_job *j = arg;
	const int len = st_ring_len(j->s)[j->l], H = j->x->m->cfg.hidden_dim;
	int e0 = (int)((long)len * ith / nth), e1 = (int)((long)len * (ith + 1) / nth);
	attend_range(j, e0, e1, j->x->scores + e0, j->x->part_og + (size_t)ith * H,
	             &j->part_max[ith], &j->part_sum[ith]);
}

/* One activated row's attention over its ring (which already holds the
 * row itself): o = sum_j a_j v_j, written into og (H) times the gate g.
 * A long ring is split over the pool's threads. */
static void attend(sb_bctx *x, const sb_layer *ly, int l, sb_state *s, const float *q,
                   int64_t pos, const float *g, float *og)
{
	const sb_config *c = &x->m->cfg;
	const int H = c->hidden_dim, len = st_ring_len(s)[l];
	attn_job j = {x, ly, l, s, q, pos, {0}, {0}};
	int nth = len >= PARALLEL_ATTN_MIN ? sb_pool_threads(x->pool) : 1;
	if (nth > 1) {
		sb_pool_run(x->pool, attend_part, &j);
	} else {
		nth = 1;
		attend_range(&j, 0, len, x->scores, x->part_og, &j.part_max[0], &j.part_sum[0]);
	}
	float gmax = -INFINITY, sum = 0.0f;
	for (int t = 0; t < nth; t++)
		gmax = fmaxf(gmax, j.part_max[t]);
	memset(og, 0, (size_t)H * sizeof(float));
	for (int t = 0; t < nth; t++) {
		/* softmax parts rescale to the global max; other weights are final */
		float w = c->attention == SB_ATTN_SOFTMAX
		          ? (j.part_max[t] == -INFINITY ? 0.0f : expf(j.part_max[t] - gmax))
		          : 1.0f;
		sum += w * j.part_sum[t];
		sb_axpy(og, w, x->part_og + (size_t)t * H, H);
	}
	float norm = c->attention == SB_ATTN_SOFTMAX ? 1.0f / sum : 1.0f;
	for (int i = 0; i < H; i++)
		og[i] *= g[i] * norm;
}

/* Attention for Ta >= BATCHED_ATTN_MIN_ROWS activated rows of ONE state
 * (a prefill block): the ring (oldest first) and the block's new keys and
 * values are laid end to end, entry R+i being row i's own. Row i attends to
 * entries R+i-W .. R+i, exactly the ring it would see token by token. The
 * scores of all rows against that span are one sgemm, the weighted values a
 * second; then the ring keeps the last W+1 entries. q (Ta, Z) is in x->qv,
 * new keys and values already in ck/cv at R.. */
typedef struct block_job {
	sb_bctx *x;
	const sb_layer *ly;
	int Ta, R, lo, cols;
} block_job;

/* One thread's rows of the block: scores against the span, weights inside
 * each row's window (zero outside), weighted values, gate. */
static void attend_block_part(void *arg, int ith, int nth)
{
	const block_job *j = arg;
	sb_bctx *x = j->x;
	const sb_config *c = &x->m->cfg;
	const int W = c->window, Z = c->z_dim, H = c->hidden_dim, ZH = Z + 2 * H,
	          M = c->max_positions, R = j->R, lo = j->lo, cols = j->cols;
	const int i0 = (int)((long)j->Ta * ith / nth), i1 = (int)((long)j->Ta * (ith + 1) / nth);
	if (i0 >= i1)
		return;
	const float scale = c->attention == SB_ATTN_SOFTMAX ? 1.0f / sqrtf((float)Z)
	                                                    : 1.0f / (float)W;
	float *sc = x->sc + (size_t)i0 * cols;
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, cols, Z, scale,
	            x->qv + (size_t)i0 * Z, Z, x->ck + (size_t)lo * Z, Z, 0.0f, sc, cols);
	for (int i = i0; i < i1; i++) {
		float *row = x->sc + (size_t)i * cols;
		const int e0 = R + i - W > lo ? R + i - W : lo, e1 = R + i; /* inclusive */
		const int64_t pos = x->cpos[R + i];
		float mxs = -INFINITY;
		for (int e = e0; e <= e1; e++) {
			float v = row[e - lo];
			if (j->ly->rel_bias)
				v += rel_bias(j->ly, M, x->cpos[e], pos);
			row[e - lo] = v;
			if (v > mxs)
				mxs = v;
		}
		attn_weights(c->attention, row + (e0 - lo), e1 - e0 + 1, mxs);
		for (int e = lo; e < e0; e++)
			row[e - lo] = 0.0f;
		for (int e = e1 + 1; e < R + j->Ta; e++)
			row[e - lo] = 0.0f;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, H, cols, 1.0f, sc, cols,
	            x->cv + (size_t)lo * H, H, 0.0f, x->og + (size_t)i0 * H, H);
	for (int i = i0; i < i1; i++) {
		const float *g = x->zgv + (size_t)i * ZH + Z;
		float *og = x->og + (size_t)i * H;
		for (int k = 0; k < H; k++)
			og[k] *= g[k];
	}
}

static void attend_block(sb_bctx *x, const sb_layer *ly, int l, sb_state *s, int Ta)
{
	const sb_config *c = &x->m->cfg;
	const int W = c->window, W1 = W + 1, Z = c->z_dim, H = c->hidden_dim;
	const int R = st_ring_len(s)[l], head = st_ring_head(s)[l];
	const float *K = st_ring_k(s) + (size_t)l * W1 * Z;
	const float *Vv = st_ring_v(s) + (size_t)l * W1 * H;
	const int64_t *P = st_ring_pos(s) + (size_t)l * W1;
	const int lo = R - W > 0 ? R - W : 0;  /* first entry any row needs */
	for (int e = lo; e < R; e++) {
		int slot = sb_ring_slot(head, e, W1);
		memcpy(x->ck + (size_t)e * Z, K + (size_t)slot * Z, (size_t)Z * sizeof(float));
		memcpy(x->cv + (size_t)e * H, Vv + (size_t)slot * H, (size_t)H * sizeof(float));
		x->cpos[e] = P[slot];
	}
	block_job j = {x, ly, Ta, R, lo, R + Ta - lo};
	sb_pool_run(x->pool, attend_block_part, &j);
	for (int i = Ta > W1 ? Ta - W1 : 0; i < Ta; i++)
		ring_push(c, s, l, x->ck + (size_t)(R + i) * Z, x->cv + (size_t)(R + i) * H,
		          x->cpos[R + i]);
}

typedef struct rows_job {
	sb_bctx *x;
	const sb_layer *ly;
	int l, Ta;
} rows_job;

/* Prefetches the keys and values of layer l's ring of state s. */
static void prefetch_ring(const sb_config *c, sb_state *s, int l)
{
	const int W1 = c->window + 1, Z = c->z_dim, H = c->hidden_dim;
	const int len = st_ring_len(s)[l], head = st_ring_head(s)[l];
	const int first = len < W1 - head ? len : W1 - head; /* slots head.. */
	const float *K = st_ring_k(s) + (size_t)l * W1 * Z, *V = st_ring_v(s) + (size_t)l * W1 * H;
	prefetch_bytes(K + (size_t)head * Z, (size_t)first * Z * sizeof(float));
	prefetch_bytes(K, (size_t)(len - first) * Z * sizeof(float));
	prefetch_bytes(V + (size_t)head * H, (size_t)first * H * sizeof(float));
	prefetch_bytes(V, (size_t)(len - first) * H * sizeof(float));
}

/* Batched decode: rows of different states attend in parallel, one whole
 * row per thread at a time, each with its own score buffer; the ring of
 * the thread's next row is prefetched while it works on this one. */
static void attend_rows_part(void *arg, int ith, int nth)
{
	const rows_job *j = arg;
	sb_bctx *x = j->x;
	const sb_config *c = &x->m->cfg;
	const int Z = c->z_dim, H = c->hidden_dim, ZH = Z + 2 * H, W1 = c->window + 1;
	for (int i = ith; i < j->Ta; i += nth) {
		const int t = x->aidx[i];
		if (i + nth < j->Ta)
			prefetch_ring(c, ROW_STATE(x, x->aidx[i + nth]), j->l);
		attn_job aj = {x, j->ly, j->l, ROW_STATE(x, t), x->qv + (size_t)i * Z, ROW_POS(x, t), {0}, {0}};
		float sum, mxs, *og = x->og + (size_t)i * H;
		int len = st_ring_len(ROW_STATE(x, t))[j->l];
		attend_range(&aj, 0, len, x->scores + (size_t)ith * W1, og, &mxs, &sum);
		const float *g = x->zgv + (size_t)i * ZH + Z;
		float norm = c->attention == SB_ATTN_SOFTMAX ? 1.0f / sum : 1.0f;
		for (int k = 0; k < H; k++)
			og[k] *= g[k] * norm;
	}
}

typedef struct qk_job {
	sb_bctx *x;
	const sb_layer *ly;
	int l, Ta, R;
	bool block;
	bool push;             /* rows of distinct states: each pushes its own ring */
} qk_job;

/* Queries and keys of activated rows (q = z*gq + bq, k = z*gk + bk, both
 * rotated), split over the pool: into qv and, for the matrix-product path,
 * the block's part of ck/cv/cpos, else kbuf, pushed into the rings here
 * when the rows' states are distinct (else in row order after). */
static void qk_part(void *arg, int ith, int nth)
{
	const qk_job *j = arg;
	sb_bctx *x = j->x;
	const sb_layer *ly = j->ly;
	const sb_config *c = &x->m->cfg;
	const int Z = c->z_dim, H = c->hidden_dim, ZH = Z + 2 * H;
	const int i0 = (int)((long)j->Ta * ith / nth), i1 = (int)((long)j->Ta * (ith + 1) / nth);
	for (int i = i0; i < i1; i++) {
		const int t = x->aidx[i];
		const float *z = x->zgv + (size_t)i * ZH;
		float *q = x->qv + (size_t)i * Z;
		float *k = j->block ? x->ck + (size_t)(j->R + i) * Z : x->kbuf + (size_t)i * Z;
		for (int e = 0; e < Z; e++) {
			q[e] = z[e] * ly->gq[e] + ly->bq[e];
			k[e] = z[e] * ly->gk[e] + ly->bk[e];
		}
		if (c->rel_pos == SB_POS_ROTARY)
			sb_rotary(q, k, Z, ROW_POS(x, t), x->inv_freq);
		if (j->block) {
			memcpy(x->cv + (size_t)(j->R + i) * H, z + Z + H, (size_t)H * sizeof(float));
			x->cpos[j->R + i] = ROW_POS(x, t);
		}
		if (j->push)
			ring_push(c, ROW_STATE(x, t), j->l, k, z + Z + H, ROW_POS(x, t));
	}
}

/* The gated attention unit for the activated rows of one layer: their
 * projections gathered into one product, their ring pushes and attention
 * in row order, and the output h_proj into att (residual_range scales it
 * by pr1). */
static void attention_rows(sb_bctx *x, const sb_layer *ly, int l, int Ta)
{
	const sb_config *c = &x->m->cfg;
	const int D = c->embed_dim, Z = c->z_dim, H = c->hidden_dim, ZH = Z + 2 * H;
	for (int i = 0; i < Ta; i++)
		memcpy(x->mxa + (size_t)i * D, x->mx + (size_t)x->aidx[i] * D,
		       (size_t)D * sizeof(float));
	matmul(x, x->zgv, x->mxa, Ta, &ly->mx, ly->mx_b);
	activate_rows(x, x->zgv, Ta, (size_t)Ta * ZH);
	/* One state for every row (a prefill block) and a wide window: the
	 * matrix-product path. Otherwise row by row through the ring. */
	bool block = x->ck && Ta >= BATCHED_ATTN_MIN_ROWS && x->rows->one_state;
	const int R = block ? st_ring_len(ROW_STATE(x, x->aidx[0]))[l] : 0;
	/* Rows of distinct states (a batched decode step) can attend in
	 * parallel once every row's key is in its ring. */
	bool parallel_rows = !block && Ta > 1 && sb_pool_threads(x->pool) > 1 && x->rows->distinct;
	const bool push = !block && x->rows->distinct;
	qk_job qj = {x, ly, l, Ta, R, block, push};
	if (Ta >= PAR_MIN_ROWS)
		sb_pool_run(x->pool, qk_part, &qj);
	else
		qk_part(&qj, 0, 1);
	for (int i = 0; !block && i < Ta; i++) {
		const int t = x->aidx[i];
		const float *z = x->zgv + (size_t)i * ZH;  // z (Z), g (H), v (H)
		if (!push)
			ring_push(c, ROW_STATE(x, t), l, x->kbuf + (size_t)i * Z, z + Z + H,
			          ROW_POS(x, t));
		if (!parallel_rows)
			attend(x, ly, l, ROW_STATE(x, t), x->qv + (size_t)i * Z, ROW_POS(x, t), z + Z,
			       x->og + (size_t)i * H);
	}
	if (block)
		attend_block(x, ly, l, ROW_STATE(x, x->aidx[0]), Ta);
	if (parallel_rows) {
		rows_job j = {x, ly, l, Ta};
		sb_pool_run(x->pool, attend_rows_part, &j);
	}
	matmul(x, x->att, x->og, Ta, &ly->ho, ly->ho_b);
	/* (att is scaled by pr1 in residual_range) */
}

int sb_cpu_layer(sb_bctx *x, const sb_rows *r, int l, uint8_t *act_out, float *hidden,
                 sb_error *err)
{
	(void)err;
	const int T = r->T;
	x->rows = r;
	const sb_model *m = x->m;
	const sb_config *c = &m->cfg;
	const sb_layer *ly = &m->layers[l];
	const int D = c->embed_dim, D2 = 2 + D;

	rows_fn_job pre = {.x = x, .T = T, .fn = prenorm_range, .n = T, .norm = &ly->norm};
	run_rows(x, &pre);
	ema_rows(x, ly, l, T);
	matmul(x, x->hxu, x->mx, T, &ly->hx, ly->hx_b);

	/* Router: pr1 = softmax([u0 + act_bias, u1] / tau)[1]; a tie is
	 * not activated. */
	int Ta = 0;
	for (int t = 0; t < T; t++) {
		const float *u = x->hxu + (size_t)t * D2;
		float a0 = (u[0] + x->rows->act_bias) * ly->inv_tau, a1 = u[1] * ly->inv_tau;
		float mxv = a0 > a1 ? a0 : a1;
		float e0 = expf(a0 - mxv), e1 = expf(a1 - mxv);
		float p1 = e1 / (e0 + e1), p0 = e0 / (e0 + e1);
		x->pr1[t] = p1;
		bool act = p1 > p0;
		x->arow[t] = act ? Ta : -1;
		if (act) {
			x->aidx[Ta++] = t;
			st_n_act(ROW_STATE(x, t))[l]++;
		}
		if (act_out)
			act_out[t] = act;
	}
	if (Ta > 0)
		attention_rows(x, ly, l, Ta);

	rows_fn_job res = {.x = x, .T = T, .fn = residual_range, .n = T, .norm = &ly->norm};
	run_rows(x, &res);

	if (c->ffn_dim > 0) {
		const int F = c->ffn_dim;
		rows_fn_job fpre = {.x = x, .T = T, .fn = prenorm_range, .n = T, .norm = &ly->ffn_norm};
		run_rows(x, &fpre);
		matmul(x, x->ffn, x->xn, T, &ly->fc1, ly->fc1_b);
		activate_rows(x, x->ffn, T, (size_t)T * F);
		matmul(x, x->att, x->ffn, T, &ly->fc2, ly->fc2_b);
		rows_fn_job fres = {.x = x, .T = T, .fn = residual_range, .n = T,
		                    .norm = &ly->ffn_norm, .ffn = true};
		run_rows(x, &fres);
	}
	if (hidden)
		memcpy(hidden, x->x, (size_t)T * D * sizeof(float));
	return 0;
}

int sb_cpu_embed(sb_bctx *x, const sb_rows *r, sb_error *err)
{
	(void)err;
	const sb_model *m = x->m;
	const int D = m->cfg.embed_dim;
	x->rows = r;
	for (int t = 0; t < r->T; t++) {
		float *xi = x->x + (size_t)t * D;
		sb_mat_row(&m->embed, r->tokens[t], xi);
		for (int d = 0; d < D; d++)
			xi[d] *= m->embed_scale;
	}
	return 0;
}

int sb_cpu_logits(sb_bctx *x, const sb_rows *r, const int *sel, int n, float *dst,
                  sb_error *err)
{
	(void)err;
	const sb_model *m = x->m;
	const sb_config *c = &m->cfg;
	const int D = c->embed_dim;
	x->rows = r;
	/* The selected rows, final-normed, side by side: gathered into xn,
	 * then normed back into x; without a final norm gathered in place
	 * (ascending, so it never overwrites a row still to be read). */
	for (int i = 0; i < n; i++) {
		const float *xi = x->x + (size_t)sel[i] * D;
		float *yi = (c->normalize_before ? x->xn : x->x) + (size_t)i * D;
		if (yi != xi)
			memcpy(yi, xi, (size_t)D * sizeof(float));
	}
	if (c->normalize_before)
		sb_norm_rows(&m->final_norm, x->x, x->xn, n, D);
	matmul(x, dst, x->x, n, &m->out, NULL);
	return 0;
}
