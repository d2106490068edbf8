/*
 * kernels.cuh - the CUDA engine's kernels, as launch functions that
 * engine.cu calls. Every launch goes to the stream it is given and
 * allocates nothing. Shapes use the letters of docs/computation.md.
 */
#ifndef SB_CUDA_KERNELS_CUH
#define SB_CUDA_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "seqboat.h"

/* A stream and whether kernels on it may be launched early (programmatic
 * dependent launch, compute capability 9.0 and later). */
struct sbk_stream {
	cudaStream_t s;
	bool pdl;
};

/* A weight matrix on the device: its file dtype (I8 keeps its F16
 * scales), and the copy the matrix products of many rows read: float32
 * for cuBLAS SGEMM (== w for F32; F32, BF16 and I8 weights), or for F16
 * weights the matrix twice side by side, [W | W], for the tensor-core
 * products of gemm.cu (there w32 is NULL), with zero rows up to a multiple
 * of 8. */
struct sbk_mat {
	sb_dtype dt;
	const void *w;         // (rows, cols)
	const __half *sc;      // (rows, ceil(cols/32)) I8 only
	const float *w32;      // (rows, cols) or NULL
	const __half *w2;      // (rows2, 2 cols) F16 only, else NULL; rows past rows zero
	int rows, cols;
	int rows2;             // rows rounded up to 8 (aligned rows of a product's result)
};

struct sbk_norm {
	int kind;              // sb_norm_kind
	const float *w, *b;    // (D) or NULL
	float scalar;
};

/* Dimensions and the state block's layout. */
struct sbk_geo {
	int D, Z, H, N, W, W1, M, F, V;
	int attn;              // sb_attn_kind
	int act;               // sb_act_kind
	bool rotary;
	bool vec;              // 16-byte loads where rows are aligned (SEQBOAT_CUDA_VEC=0: never)
	float scale;           // 1/sqrt(Z) for softmax, 1/W otherwise
	size_t n_act, ring_len, ring_head, ring_pos, h, ring_k, ring_v;
};

/* One layer's small tensors, float32 on the device. */
struct sbk_layer_vecs {
	const float *q, *pb, *g, *omega;   // EMA (D, N), (D)
	const float *gq, *gk, *bq, *bk;    // (Z)
	const float *rel_bias;             // (2M-1) or NULL
	float inv_tau;
};

/* One layer's weights on the device. */
struct sbk_layer {
	sbk_norm norm, ffn_norm;
	sbk_layer_vecs v;
	sbk_mat hx, mx, ho, fc1, fc2;
	const float *hx_b, *mx_b, *ho_b, *fc1_b, *fc2_b;
};

/* Activation kinds for the fused epilogues; SBK_ACT_NONE leaves y alone. */
#define SBK_ACT_NONE (-1)

__device__ __forceinline__ float apply_act(int k, float x)
{
	switch (k) {
	case SB_ACT_SILU:
		return x / (1.0f + expf(-x));
	case SB_ACT_GELU:
		return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
	case SB_ACT_RELU:
		return x > 0.0f ? x : 0.0f;
	default:
		return x;
	}
}
#define SBK_GEMV_MAX_ROWS 8
/* Ring entries per block of the decode attention. */
#define SBK_CHUNK 32

/* x (T, D) = embed[tok] * scale */
void sbk_embed(sbk_stream st, const sbk_mat *E, const int32_t *tok, int T, float scale, float *x);
/* y (T, D) = Norm(x) */
void sbk_norm_rows(sbk_stream st, const sbk_norm *nm, const float *x, float *y, int T, int D);
/* EMA over T rows of one state: h (D, N) of the layer. The rows are cut
 * in chunks of SBK_EMA_CHUNK scanned side by side: each chunk's end state
 * from zero, then each chunk again from its carried-in state. scratch:
 * sbk_ema_scratch(T, D, N) floats. */
#define SBK_EMA_CHUNK 32
static inline size_t sbk_ema_scratch(int T, int D, int N)
{
	return ((size_t)(T + SBK_EMA_CHUNK - 1) / SBK_EMA_CHUNK + 1) * (size_t)D * (size_t)N;
}
void sbk_ema_scan(sbk_stream st, float *h, const sbk_layer_vecs *v, const float *xn, float *mx,
                  int T, int D, int N, int act, float *scratch);
/* Norm (if prenorm) and EMA of B rows, row b in state blocks[b]. */
void sbk_norm_ema_rows(sbk_stream st, unsigned char *const *blocks, const sbk_geo *g, int l,
                       bool prenorm, const sbk_norm *nm, const sbk_layer_vecs *v, const float *x,
                       float *mx, int B);
/* y (B, rows) = act(x (B, cols) W^T + bias), B <= SBK_GEMV_MAX_ROWS, from
 * W's own dtype. A row b is skipped (y = 0) where arow[b] < 0 (arow not
 * NULL) or where its router says no (rhxu not NULL: rows of (2+D) router
 * logits, with act_bias and inv_tau). */
void sbk_gemv(sbk_stream st, const sbk_mat *W, const float *x, int B, const float *bias, int act,
              float *y, const float *rhxu, int rld, float act_bias, float inv_tau,
              const int *arow);

/* ---- a block of rows of one state (prefill) ---- */

/* The attention's operands as halves for the split tensor-core products
 * (gemm.cuh), written by the kernels that make them: over the span of
 * cols = W+T entries, K (cols, 3Z) [hi | hi | lo] and V 3 x (cols, H)
 * [hi; hi; lo]; the queries (T, 3Z) [hi | lo | hi]; the attention weights
 * (T, 3 cols) [hi | lo | hi], each column j times 2^ve[j]. Each row with
 * its exponent. */
struct sbk_attn_halves {
	__half *qh, *kh, *vh, *sh;
	int *qe, *ke, *ve, *se;  // (T), (cols), (cols), (T)
	int cols;
};

/* Router for T rows: pr1, arow (index among the activated or -1), aidx
 * (row of each activated), *nact (count), the state's n_act[l] += count,
 * act_out (T) bytes. */
void sbk_router_block(sbk_stream st, const float *hxu, int T, int D2, float act_bias,
                      float inv_tau, float *pr1, int *arow, int *aidx, int *nact,
                      uint64_t *state_nact_l, uint8_t *act_out);
/* The span the block attends over: W ring slots (the ring's last W
 * entries, right-aligned, zero where the ring is shorter) then T slots for
 * the block's activated rows. Fills the ring part: positions, and the
 * keys and values as halves (ah). */
void sbk_ring_span(sbk_stream st, const unsigned char *block, const sbk_geo *g, int l,
                   const sbk_attn_halves *ah, int64_t *cpos);
/* Queries (T, Z) and the span's new keys/values/positions of the
 * activated rows (zero past the count), in float32 and as halves. */
void sbk_qk_block(sbk_stream st, const sbk_geo *g, const sbk_layer_vecs *v, const float *zgv,
                  const int *aidx, const int *nact, const int64_t *pos, const double *inv_freq,
                  int T, float *Q, float *CK, float *CV, int64_t *cpos,
                  const sbk_attn_halves *ah);
/* S (T, W+T), the split product's scores times 2^-(qe[i] + ke[j]) ->
 * attention weights inside each row's window, zero elsewhere and on rows
 * past the count, in S and as halves. */
void sbk_attn_weights_block(sbk_stream st, const sbk_geo *g, const sbk_layer_vecs *v, float *S,
                            int T, const int *nact, const int32_t *ring_len_l,
                            const int64_t *cpos, const sbk_attn_halves *ah);
/* og (T, H) = og 2^se[i] * g of each activated row (zero past the count);
 * xh, xe (NULL or (T, 2H), (T)): og as the halves of the next weight
 * product, [hi | lo]. */
void sbk_gate_block(sbk_stream st, const sbk_geo *g, float *og, const float *zgv,
                    const int *aidx, const int *nact, int T, const int *se, __half *xh, int *xe);
/* The activated rows' entries into the ring (the last W+1 of them), then
 * the counters. */
void sbk_ring_push_block(sbk_stream st, unsigned char *block, const sbk_geo *g, int l,
                         const float *CK, const float *CV, const int64_t *cpos,
                         const int *nact, int T);

/* ---- rows of distinct states (decode) ---- */

/* Router, q/k (rotary), ring push and attention of each row b (state
 * blocks[b]) over its ring, in chunks of SBK_CHUNK entries whose partial
 * sums (po, pm, ps) the row's last chunk combines, times the gate, into og
 * (B, H). pr1, arow (b or -1), act_out (B) bytes; count (B) zeros, left
 * zero. The ring counters and n_act move in sbk_residual (ring_blocks). */
void sbk_attn_rows(sbk_stream st, unsigned char *const *blocks, const sbk_geo *g,
                   const sbk_layer_vecs *v, int l, const int64_t *pos, const float *hxu,
                   float act_bias, const float *zgv, const double *inv_freq, float *pr1,
                   int *arow, uint8_t *act_out, float *po, float *pm, float *ps, int *count,
                   float *og, int B);

/* x = act(hx + att*pr1 + x) (att only where arow >= 0), or x += att (ffn);
 * then Norm(x) if post is not NULL; hid (T, D) gets a copy if not NULL.
 * ring_blocks (decode rows): the ring counters and n_act[l] of each
 * activated row's state advance by its push. */
void sbk_residual(sbk_stream st, float *x, const float *hxu, int D2, const float *att,
                  const int *arow, const float *pr1, int T, int D, int act, bool ffn,
                  const sbk_norm *post, float *hid, unsigned char *const *ring_blocks,
                  const sbk_geo *g, int l);

/* ---- the fused decode step (step.cu) ---- */

/* Rows one fused step takes at most. */
#define SBK_STEP_MAX_ROWS 8
/* Blocks that share one chunk of a row's decode attention in the fused
 * step, each for a slab of the value columns. */
#define SBK_STEP_SLABS 4

/* Everything a whole decode step of B distinct rows reads and writes:
 * the model (layers: a device array of L), the rows (blocks, tok, pos on
 * the device) and the engine's scratch, laid out as for the per-op
 * kernels (rows of stride D, D + 2, Z + 2H, H, F, V; act (L, R); hid
 * (L, R, D); po (R, nch, H); pm, ps (R, SBK_STEP_SLABS, nch)). */
struct sbk_step {
	sbk_geo g;
	int L, B, R, nch;
	bool prenorm, ffn;
	float embed_scale, act_bias;
	sbk_mat embed, out;
	sbk_norm final_norm;
	const sbk_layer *layers;
	/* the dtype of every layer's matrices and out's and the kind of
	 * every norm (-1: they differ), and whether only the generic kernel
	 * runs (SEQBOAT_CUDA_KIND=any; step.cu's kinds) */
	int wdt, nkind;
	bool any_kind;
	unsigned char *const *blocks;
	const int32_t *tok;
	const int64_t *pos;
	const double *inv_freq;
	float *x, *x2;         // (R, D) each: the residual stream, in one or the other
	/* (po also holds the two-phase attention's scores, (R, W1)) */
	float *hxu, *zgv, *og, *att, *ffn_h, *pr1, *po, *pm, *ps, *hid, *logits;
	/* The EMA split by what a step knows when: mx = act(hg + u ec), hg =
	 * sum_n (g q)[d, n] h[d, n] from the state before the step, ec = sum_n
	 * g pb + omega from the model (sbk_step_prepare). */
	float *gq;             // (L, D, N) g * q
	float *ec;             // (L, D)
	float *hg;             // (R, L, D)
	int *cnt;              // (R, SBK_STEP_SLABS) chunks done, zero between steps
	unsigned *gbar;        // the grid barrier's counter (zero once; step.cu)
	int *arow;
	uint8_t *act;
	/* weight rows each warp copies to shared memory a phase ahead (0 to
	 * STEP_PF_MAX, sbk_step_setup), in slots of slota / slotc bytes */
	int pfa, pfc, slota, slotc;
	/* every row of out, hx_proj, mx_proj and h_proj is whole 16-byte
	 * pieces from a 16-byte aligned matrix (the engine's; then a row fits
	 * its slot wherever there are slots, and the step need not check each) */
	bool rows_aligned;
	/* the same of the small tables a layer copies (norms, hg, ec, q/k's
	 * vectors): 16-byte aligned, of whole 16-byte pieces */
	bool tables_aligned;
	/* the attention's pool (sbk_step_setup): floats of shared memory for
	 * one row's values of a slab of columns, its gate and its scores (0:
	 * none), the device's shared memory a block may have, and whether this
	 * launch's kernel has the pool (set per launch from its rows' count) */
	int pool, smem_optin;
	bool has_pool;
	/* the copies are bulk copies (compute capability 9.0 and later; before
	 * it there are no slots and no pool) */
	bool bulk;
};

/* Sets a's prefetch plan for this device (a's model fields set) and
 * returns 0, or -1 where the fused step cannot run here. */
int sbk_step_setup(sbk_step *a);
/* gq and ec from the model's EMA tables, once (a's model fields and
 * buffers set). */
void sbk_step_prepare(cudaStream_t s, const sbk_step *a);
/* Blocks the fused step runs with on this device (all resident at once),
 * or 0 where it cannot run (too much shared memory, no cooperative
 * launch): then the per-op kernels do the step. */
int sbk_step_grid(const sbk_step *a, int B);
/* The whole step as one cooperative kernel of `grid` blocks (from
 * sbk_step_grid for a.B rows). Returns the launch's error. */
cudaError_t sbk_step_launch(cudaStream_t s, const sbk_step *a, int grid);

/* Upload helpers: w32 (rows, cols) float32 from a 16-bit or I8 matrix. */
void sbk_widen(sbk_stream st, const sbk_mat *W, float *w32);

#endif
