/*
 * internal.h - the model's in-memory layout and the state's, shared by
 * model.c, state.c, forward.c and the backends (backend.h). Not part of the
 * public API.
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

typedef struct sb_backend sb_backend;

struct sb_state {
	const sb_model *m;
	const sb_backend *be;  // keeps the block: sb_backend_cpu for host states
	int device;            // the backend's device index (0 on the CPU)
	sb_state_layout lay;
	uint64_t n_tokens;     // tokens read (on the host for every backend)
	unsigned char *block;  // lay.bytes in the backend's memory
	void *priv;            // the backend's own per-state data, or NULL
	char where[24];        // "cpu", "cuda:0": sb_state_device()
};

void sb_state_layout_of(const sb_model *m, sb_state_layout *lay);

/* ---- dtype.c: weight formats ---- */

/* Rounding to nearest even, as torch's .half() and .bfloat16(). */
uint16_t sb_f32_to_f16(float f);
uint16_t sb_f32_to_bf16(float f);
float sb_f16_to_f32(uint16_t h);
/* One row of W widened to float32. */
void sb_mat_row(const sb_mat *W, int r, float *out);
/* Widen n elements of dtype dt at src to float32. */
void sb_widen(sb_dtype dt, const void *src, float *dst, size_t n);
/* The CPU has AVX2, FMA and F16C (x86-64, detected once). */
bool sb_have_avx2(void);

/* ---- sampler.c ---- */

/* sb_sampler_sample on logits that stay as they are: they are copied into
 * work (n_vocab floats) only where a logit bias or a penalty must change
 * them; otherwise the token is picked from logits directly. The same token
 * as sb_sampler_sample on a copy. */
int32_t sb_sampler_sample_from(sb_sampler *s, const float *logits, float *work);

#endif /* SB_INTERNAL_H */
