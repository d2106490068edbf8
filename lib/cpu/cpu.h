/*
 * cpu.h - what the CPU backend's files share: its context and the kernels
 * (ops.c). Nothing outside lib/cpu/ includes it.
 */
#ifndef SB_CPU_H
#define SB_CPU_H

#include "backend.h"

/* Threads of one context at most (the pool and the per-thread buffers). */
#define SB_MAX_THREADS 256

/* Rows per block: bounds the scratch memory, whatever the prompt length
 * (a context for a larger batch gets that many rows instead). */
#define SB_CPU_BLOCK_ROWS 512

/* From this ring size on, a prefill block's attention runs as two matrix
 * products over the ring plus the block (layer.c); the context then keeps
 * the scratch for it. */
#define SB_CPU_BATCHED_ATTN_MIN_W1 64

typedef struct sb_pool sb_pool;

/* The CPU backend's context: the threads and scratch for R rows. */
struct sb_bctx {
	const sb_model *m;
	int R;                // rows per block
	int n_threads;
	double *inv_freq;     // (Z/2) rotary frequencies
	/* the current block: */
	const sb_rows *rows;  // set by embed, valid until the block's last op
	float act_bias;
	int *aidx;            // (R) rows the router activated in this layer
	int *arow;            // (R) each row's index among them, or -1
	float *pr1;           // (R) router probability of activation
	/* activations: */
	float *x;             // (R, D) residual stream
	float *xn;            // (R, D) normed input
	float *mx;            // (R, D) silu(EMA output)
	float *hxu;           // (R, 2+D) router logits then hx
	float *mxa;           // (R, D) mx of the activated rows
	float *zgv;           // (R, Z+2H) silu(mx_proj) of the activated rows
	float *qv;            // (R, Z) rotated queries
	float *og;            // (R, H) attention output times gate
	float *att;           // (R, D) h_proj output
	float *ffn;           // (R, F) FFN hidden
	float *scores;        // (threads, W+1) one query's attention weights per thread
	float *ws;            // matmul widening scratch
	float *kbuf;          // (R, Z) rotated keys before their ring push
	sb_pool *pool;        // the threads of every product and attention
	/* prefill attention as matrix products (windows of >= 64 only): */
	float *ck;            // (W+1+R, Z) ring keys then the block's new keys
	float *cv;            // (W+1+R, H) likewise values
	int64_t *cpos;        // (W+1+R) their positions
	float *sc;            // (R, W+1+R) scores, then weights
	float *part_og;       // (threads, H) per-thread attention partial sums
};

/* layer.c: the compute ops of the table. */
int sb_cpu_embed(sb_bctx *b, const sb_rows *r, sb_error *err);
int sb_cpu_layer(sb_bctx *b, const sb_rows *r, int l, uint8_t *act, float *hidden,
                 sb_error *err);
int sb_cpu_logits(sb_bctx *b, const sb_rows *r, const int *sel, int n, float *dst,
                  sb_error *err);

/* What the CPU backend keeps with each state (s->priv): how far into
 * each layer's ring the block may hold non-zero bytes, so that reset and
 * copy touch only the slots a sequence has used, not the whole W+1 ring
 * (a new block's pages are mapped lazily and stay untouched until used). */
typedef struct sb_cpu_state {
	bool mapped;          // block came from mmap (else from calloc)
	int32_t dirty[];      // (L) slots [0, dirty[l]) may be non-zero
} sb_cpu_state;

/* Typed views into a host state's block (the layout of backend.h). */
static inline uint64_t *st_n_act(sb_state *s) { return (uint64_t *)(s->block + s->lay.n_act); }
static inline int32_t *st_ring_len(sb_state *s) { return (int32_t *)(s->block + s->lay.ring_len); }
static inline int32_t *st_ring_head(sb_state *s) { return (int32_t *)(s->block + s->lay.ring_head); }
static inline int64_t *st_ring_pos(sb_state *s) { return (int64_t *)(s->block + s->lay.ring_pos); }
static inline float *st_h(sb_state *s) { return (float *)(s->block + s->lay.h); }
static inline float *st_ring_k(sb_state *s) { return (float *)(s->block + s->lay.ring_k); }
static inline float *st_ring_v(sb_state *s) { return (float *)(s->block + s->lay.ring_v); }

/* ---- ops.c: kernels on float* ---- */

/* Y (T, W.rows) = X (T, W.cols) W^T (+ bias). ws: scratch of
 * sb_matmul_ws_floats(cols, threads) floats. One row (decode) is a
 * matrix-vector product, more rows single-threaded OpenBLAS sgemm calls;
 * either way the output columns are split over the pool's threads. */
void sb_matmul(float *Y, const float *X, int T, const sb_mat *W,
               const float *bias, float *ws, sb_pool *pool);
size_t sb_matmul_ws_floats(int max_cols, int n_threads);
/* The same product with every element summed exactly as the one-row
 * (matrix-vector) kernel sums it, so that T rows give bit for bit the
 * numbers of T calls with one row: used for decode batches, whose rows
 * must not depend on which others share the batch. Weights are widened in
 * registers, once per 4 rows of X (6 with AVX2). Falls back to sb_matmul where
 * sb_matmul_has_exact(W) is false (q8, or a CPU without AVX2). */
void sb_matmul_exact(float *Y, const float *X, int T, const sb_mat *W,
                     const float *bias, float *ws, sb_pool *pool);
bool sb_matmul_has_exact(const sb_mat *W);

/* The damped EMA (docs/computation.md section 2) for channels d0..d1-1 of one row:
 * h (D, N) = q*h + pb*xn[d] per order, out[d] = sum_n h*g + omega[d]*xn[d]. */
void sb_ema_row(float *h, const float *q, const float *pb, const float *g, const float *omega,
                const float *xn, float *out, int d0, int d1, int N);

/* A query against a window ring (keys K (W1, Z), values V (W1, H), entry
 * e in slot sb_ring_slot(head, e, W1)): out[e-e0] = scale * q.K[e] for e in
 * e0..e1-1, and og (H) += sum a[e-e0] V[e]. */
void sb_ring_dots(const float *q, const float *K, int Z, int W1, int head, int e0, int e1,
                  float scale, float *out);
void sb_ring_accum(float *og, const float *a, const float *V, int H, int W1, int head, int e0,
                   int e1);

/* y += a x over n floats (vectorized where the CPU allows). */
void sb_axpy(float *y, float a, const float *x, int n);

void sb_norm_apply(const sb_norm *nm, float *y, const float *x, int D);
/* sb_norm_apply on n rows of D (x and y rows side by side), several
 * rows at a time: the same numbers for each row. */
void sb_norm_rows(const sb_norm *nm, float *y, const float *x, int n, int D);
void sb_activate(sb_act_kind k, float *x, size_t n);
float sb_silu(float x);
/* Rotate the interleaved pairs of a query and a key (Z each) by position
 * pos (docs/computation.md section 3); inv_freq: (Z/2) 10000^(-2i/Z) in double. */
void sb_rotary(float *q, float *k, int Z, int64_t pos, const double *inv_freq);

#endif /* SB_CPU_H */
