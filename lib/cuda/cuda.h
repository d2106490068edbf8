/*
 * cuda.h - the CUDA engine's plain C interface, between lib/cuda/backend.c
 * (C, the sb_backend of backend.h) and the .cu files (nvcc's C++, which
 * cannot include internal.h). Not part of the public API.
 *
 * The engine keeps its own copy of the weights on the GPU (uploaded once,
 * at context creation), states in device memory laid out exactly as
 * sb_state_layout_of() says, and scratch for max_rows rows. A block's ops
 * (embed, layer, logits) only enqueue work on the context's stream; host
 * outputs are written by sb_cuda_sync. A decode block of distinct states
 * runs as one CUDA graph (captured once per row count, replayed after),
 * or, for one row (with SEQBOAT_CUDA_FUSED=1 at most 8; =0 never), as
 * one cooperative kernel (step.cu).
 */
#ifndef SB_CUDA_H
#define SB_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "seqboat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A weight matrix y = W x, out x in, row-major, host memory. */
typedef struct sb_cuda_mat {
	sb_dtype dtype;          /* F32, F16, BF16, or I8 with F16 scales */
	const void *data;        /* (rows, cols) */
	const void *scales;      /* (rows, ceil(cols/32)) F16, I8 only */
	int rows, cols;
} sb_cuda_mat;

typedef struct sb_cuda_norm {
	sb_norm_kind kind;
	const float *weight;     /* (D) or NULL */
	const float *bias;       /* (D) or NULL */
	float scalar;
} sb_cuda_norm;

typedef struct sb_cuda_layer_desc {
	sb_cuda_norm norm;
	const float *ema_q, *ema_pb, *ema_g;  /* (D, N) */
	const float *omega;                   /* (D) */
	float inv_tau;
	sb_cuda_mat hx;  const float *hx_b;   /* (2+D, D), (2+D) */
	sb_cuda_mat mx;  const float *mx_b;   /* (Z+2H, D), (Z+2H) */
	sb_cuda_mat ho;  const float *ho_b;   /* (D, H), (D) */
	const float *gq, *gk, *bq, *bk;       /* (Z) */
	const float *rel_bias;                /* (2M-1) or NULL */
	sb_cuda_norm ffn_norm;
	sb_cuda_mat fc1; const float *fc1_b;  /* (F, D), (F) */
	sb_cuda_mat fc2; const float *fc2_b;  /* (D, F), (D) */
} sb_cuda_layer_desc;

/* The model as the engine needs it; everything is copied at context
 * creation, so the description may be freed after. */
typedef struct sb_cuda_model {
	const sb_config *cfg;
	float embed_scale;
	sb_cuda_mat embed, out;
	bool tied;                            /* out is embed */
	sb_cuda_norm final_norm;
	const sb_cuda_layer_desc *layers;          /* (L) */
	/* the state block's layout (byte offsets) and size */
	size_t off_n_act, off_ring_len, off_ring_head, off_ring_pos, off_h, off_ring_k, off_ring_v;
	size_t state_bytes;
} sb_cuda_model;

/* One block of rows (backend.h's sb_rows with the states' device blocks). */
typedef struct sb_cuda_rows {
	int T;
	void *const *blocks;     /* (T) each row's state block, device memory */
	const int32_t *tokens;   /* (T) */
	const int64_t *pos;      /* (T) */
	bool one_state;          /* every row reads the same state, in order */
	bool distinct;           /* no state twice */
	float act_bias;
} sb_cuda_rows;

typedef struct sb_cuda_ctx sb_cuda_ctx;

/* "NVIDIA H200" and the like, or a message in err (no device, no driver). */
int sb_cuda_device_name(int device, char *buf, size_t cap, sb_error *err);

/* A context on GPU `device`: uploads the weights and allocates scratch for
 * max_rows rows. *out NULL on failure. */
int sb_cuda_ctx_new(const sb_cuda_model *m, int device, int max_rows, sb_cuda_ctx **out,
                    sb_error *err);
void sb_cuda_ctx_free(sb_cuda_ctx *c);
/* Device memory the context holds (weights + scratch), bytes. */
size_t sb_cuda_ctx_device_bytes(const sb_cuda_ctx *c);

/* State blocks in device memory. alloc returns zeroed memory. */
int sb_cuda_state_alloc(int device, size_t bytes, void **block, sb_error *err);
void sb_cuda_state_free(int device, void *block);
int sb_cuda_state_zero(int device, void *block, size_t bytes);
int sb_cuda_state_copy(int device, void *dst, const void *src, size_t bytes);
int sb_cuda_state_download(int device, const void *block, size_t off, size_t len, void *host);
int sb_cuda_state_upload(int device, void *block, size_t off, size_t len, const void *host);

/* A block's ops (backend.h). They enqueue work; host outputs (act,
 * hidden, dst) are written when sb_cuda_sync returns. */
int sb_cuda_embed(sb_cuda_ctx *c, const sb_cuda_rows *r, sb_error *err);
int sb_cuda_layer(sb_cuda_ctx *c, const sb_cuda_rows *r, int l, uint8_t *act, float *hidden,
                  sb_error *err);
int sb_cuda_logits(sb_cuda_ctx *c, const sb_cuda_rows *r, int t0, float *dst, sb_error *err);
int sb_cuda_sync(sb_cuda_ctx *c, sb_error *err);

#ifdef __cplusplus
}
#endif

#endif /* SB_CUDA_H */
