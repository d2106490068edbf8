/*
 * internal.h - the model's in-memory layout and the kernels, shared by
 * model.c, state.c, ops.c and forward.c. Not part of the public API.
 */
#ifndef SB_INTERNAL_H
#define SB_INTERNAL_H

#include <stdatomic.h>

#include "seqboat.h"

/* 8-bit block weights ("q8"): a matrix stored as I8 [rows, cols] plus an
 * F16 tensor named <name>.q8_scale [rows, ceil(cols/32)]; weight (r, c) is
 * q[r][c] * scale[r][c/32]. */
#define SB_Q8_BLOCK 32
#define SB_Q8_SCALE_SUFFIX ".q8_scale"

/* A weight matrix y = W x, stored out x in, row-major, in its file dtype
 * (F32, F16, BF16, or I8 with scales), usually pointing into the mmapped
 * file. */
typedef struct sb_mat {
	sb_dtype dtype;
	const void *data;  // (rows, cols)
	const void *scales; // (rows, ceil(cols/32)) F16, for I8 only
	int rows;          // outputs
	int cols;          // inputs
} sb_mat;

/* A norm's parameters, widened to float32 at load. */
typedef struct sb_norm {
	sb_norm_kind kind;
	const float *weight;  // (D) or NULL when not affine / scalenorm
	const float *bias;    // (D) layernorm only, or NULL
	float scalar;         // scalenorm's learned scalar (1 when not affine)
} sb_norm;

typedef struct sb_layer {
	sb_norm norm;          // the block's own norm
	/* EMA, precomputed from delta/alpha/beta/gamma (docs/computation.md section 2): */
	float *ema_q;          // (D, N) 1 - sigmoid(delta) * sigmoid(alpha)
	float *ema_pb;         // (D, N) sigmoid(delta) * beta
	float *ema_g;          // (D, N) gamma * sqrt(1/N)
	float *omega;          // (D)
	float inv_tau;         // 1 / exp(temp)
	sb_mat hx;             // (2+D, D)
	const float *hx_b;     // (2+D)
	sb_mat mx;             // (Z+2H, D)
	const float *mx_b;     // (Z+2H)
	sb_mat ho;             // (D, H)  h_proj
	const float *ho_b;     // (D)
	const float *gq, *gk;  // (Z) rows 0 and 1 of the block's gamma
	const float *bq, *bk;  // (Z) rows 0 and 1 of the block's beta
	const float *rel_bias; // (2M-1) simple relative bias, or NULL
	/* FFN (F > 0): */
	sb_norm ffn_norm;
	sb_mat fc1;            // (F, D)
	const float *fc1_b;    // (F)
	sb_mat fc2;            // (D, F)
	const float *fc2_b;    // (D)
} sb_layer;

struct sb_model {
	sb_config cfg;
	char *dir;
	sb_st_file *st;
	sb_layer *layers;      // (L)
	sb_mat embed;          // (V, D)
	sb_mat out;            // (V, D), the same data as embed when tied
	sb_norm final_norm;    // used when normalize_before
	float embed_scale;     // sqrt(D) or 1
	float *arena;          // every float32 vector above points in here
	uint64_t n_params;
	_Atomic uint64_t fingerprint;   // see sb_model_fingerprint()
	atomic_bool fingerprint_ready;
	sb_dtype weight_dtype;
};

/* The state is one block of memory so that copy and serialization are a
 * single memcpy. Offsets are computed by sb_state_layout(). */
typedef struct sb_state_layout {
	size_t n_act;      // uint64_t (L)
	size_t ring_len;   // int32_t (L) entries held, <= W+1
	size_t ring_head;  // int32_t (L) slot of the oldest entry
	size_t ring_pos;   // int64_t (L, W+1) raw positions
	size_t h;          // float (L, D, N) EMA state
	size_t ring_k;     // float (L, W+1, Z) rotated keys
	size_t ring_v;     // float (L, W+1, H) values
	size_t bytes;      // total
} sb_state_layout;

struct sb_state {
	const sb_model *m;
	sb_state_layout lay;
	uint64_t n_tokens;     // tokens read
	unsigned char *block;  // lay.bytes
};

void sb_state_layout_of(const sb_model *m, sb_state_layout *lay);

/* Typed views into a state's block. */
static inline uint64_t *st_n_act(sb_state *s) { return (uint64_t *)(s->block + s->lay.n_act); }
static inline int32_t *st_ring_len(sb_state *s) { return (int32_t *)(s->block + s->lay.ring_len); }
static inline int32_t *st_ring_head(sb_state *s) { return (int32_t *)(s->block + s->lay.ring_head); }
static inline int64_t *st_ring_pos(sb_state *s) { return (int64_t *)(s->block + s->lay.ring_pos); }
static inline float *st_h(sb_state *s) { return (float *)(s->block + s->lay.h); }
static inline float *st_ring_k(sb_state *s) { return (float *)(s->block + s->lay.ring_k); }
static inline float *st_ring_v(sb_state *s) { return (float *)(s->block + s->lay.ring_v); }

/* Threads of one context at most (the pool and the per-thread buffers). */
#define SB_MAX_THREADS 256

/* ---- ops.c: kernels on float* ---- */

/* Y (T, W.rows) = X (T, W.cols) W^T (+ bias). ws: scratch of
 * sb_matmul_ws_floats(cols, threads) floats. One row (decode) is a
 * matrix-vector product, more rows single-threaded OpenBLAS sgemm calls;
 * either way the output columns are split over the pool's threads. */
typedef struct sb_pool sb_pool;
void sb_matmul(float *Y, const float *X, int T, const sb_mat *W,
               const float *bias, float *ws, sb_pool *pool);
size_t sb_matmul_ws_floats(int max_cols, int n_threads);
/* Rounding to nearest even, as torch's .half() and .bfloat16(). */
uint16_t sb_f32_to_f16(float f);
uint16_t sb_f32_to_bf16(float f);
float sb_f16_to_f32(uint16_t h);
/* One row of W widened to float32. */
void sb_mat_row(const sb_mat *W, int r, float *out);
/* Widen n elements of dtype dt at src to float32. */
void sb_widen(sb_dtype dt, const void *src, float *dst, size_t n);

/* The damped EMA (docs/computation.md section 2) for channels d0..d1-1 of one row:
 * h (D, N) = q*h + pb*xn[d] per order, out[d] = sum_n h*g + omega[d]*xn[d]. */
void sb_ema_row(float *h, const float *q, const float *pb, const float *g, const float *omega,
                const float *xn, float *out, int d0, int d1, int N);

/* A query against a window ring (keys K (W1, Z), values V (W1, H), entry
 * e in slot (head + e) % W1): out[e-e0] = scale * q.K[e] for e in e0..e1-1,
 * and og (H) += sum a[e-e0] V[e]. */
void sb_ring_dots(const float *q, const float *K, int Z, int W1, int head, int e0, int e1,
                  float scale, float *out);
void sb_ring_accum(float *og, const float *a, const float *V, int H, int W1, int head, int e0,
                   int e1);

/* y += a x over n floats (vectorized where the CPU allows). */
void sb_axpy(float *y, float a, const float *x, int n);

void sb_norm_apply(const sb_norm *nm, float *y, const float *x, int D);
void sb_activate(sb_act_kind k, float *x, size_t n);
float sb_silu(float x);
/* Rotate the interleaved pairs of a query and a key (Z each) by position
 * pos (docs/computation.md section 3); inv_freq: (Z/2) 10000^(-2i/Z) in double. */
void sb_rotary(float *q, float *k, int Z, int64_t pos, const double *inv_freq);

#endif /* SB_INTERNAL_H */
