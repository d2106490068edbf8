/*
 * engine.cu - the CUDA engine: weights uploaded once per context, scratch
 * for max_rows rows, and the order of the kernels for a block of rows.
 *
 * Two kinds of block (backend.h): rows of ONE state (a prefill piece) run
 * the layer as matrix products over all rows, the attention of the
 * activated rows as two products over the span "ring + the block's new
 * keys" (each row masked to its own window), then the ring keeps the last
 * W+1; rows of DISTINCT states (a decode step) attend each over its own
 * ring, split in chunks across the GPU. The router's decisions stay on the
 * device: counts, gathers and masks are computed there, so no layer waits
 * for the host, and a decode step is one CUDA graph.
 *
 * Products of many rows: F16 weights and every attention product run on
 * F16 tensor cores split to float32 accuracy (gemm.cuh); F32, BF16 and I8
 * weights as cuBLAS SGEMM on float32 copies. No TF32.
 */
#include <cublas_v2.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda.h"
#include "gemm.cuh"
#include "kernels.cuh"

typedef sbk_layer dlayer;

/* A host output waiting for the block's sync: bytes copied from pinned
 * staging to the caller's pointer. */
typedef struct pending {
	void *dst;
	const void *src;
	size_t bytes;
} pending;

#define MAX_ALLOCS 4096

struct sb_cuda_ctx {
	int device;
	cudaStream_t st;
	sbk_stream ks;         // st, for kernels: with early launch in the current block?
	bool pdl_ok;           // early launch possible (Hopper, not turned off)
	cublasHandle_t blas;   // SGEMM, CUBLAS_PEDANTIC_MATH
	cublasHandle_t blas_tc; // F16 tensor-core products (gemm.cuh), CUBLAS_DEFAULT_MATH
	void *blas_ws;
	sbk_geo g;
	int L, R, nch;
	bool prenorm, ffn;
	float embed_scale;
	sbk_mat embed, out;
	sbk_norm final_norm;
	dlayer *layers;        // (L), host array of device pointers
	void *allocs[MAX_ALLOCS];
	int n_allocs;
	size_t dev_bytes;
	/* device scratch, R rows */
	float *x, *xn, *mx, *hxu, *zgv, *Q, *og, *att, *ffn_h, *pr1;  // (R, *)
	float *S;              // (R, W+R)
	float *CK, *CV;        // (W+R, Z), (W+R, H)
	int64_t *cpos;         // (W+R)
	float *po, *pm, *ps;   // (R, nch, H), (R, SBK_STEP_SLABS, nch) each (per-op: (R, nch))
	float *logits;         // (R, V)
	/* halves of split products (gemm.cuh), with their row exponents */
	__half *xh;            // (R, 2 max(D, H, F)): X of a weight product, [hi | lo]
	__half *qh, *ckh;      // (R, 3Z) [hi | lo | hi], (W+R, 3Z) [hi | hi | lo]
	__half *sh, *cvh;      // (R, 3(W+R)) [hi | lo | hi], 3 x (W+R, H) [hi; hi; lo]
	int *xe, *qe, *cke, *se, *cve;  // (R), (R), (W+R), (R), (W+R)
	float *ema_scr;        // sbk_ema_scratch(R, D, N)
	/* the fused step's own (sbk_step) */
	float *x2, *gq, *ec, *hg;
	int *cnt;
	unsigned *gbar;
	float *hid;            // (L, R, D)
	uint8_t *act;          // (L, R)
	int *arow, *aidx, *nact;
	int *count;            // (R) chunks done per decode row, zero between kernels
	double *inv_freq;      // (Z/2)
	unsigned char *stage;  // device: pos (R) | blocks (R) | tokens (R)
	int64_t *pos;
	unsigned char **blocks;
	int32_t *tok;
	/* pinned host staging */
	unsigned char *h_stage;
	float *h_logits, *h_hid;
	uint8_t *h_act;
	pending *pend;
	int npend;
	/* graphs of decode steps, by row count */
	bool graphs_on;
	cudaGraphExec_t *graph; // (R+1)
	float *graph_bias;      // (R+1)
	bool graphed;           // the whole current block is enqueued (a graph or the fused step)
	bool act_all;           // the act bytes of every layer are on their way to h_act
	/* the fused decode step (step.cu) */
	bool step_on;          // the fused kernel can run (sbk_step_setup)
	int step_rows;         // and takes decode steps of up to this many rows
	const sbk_layer *d_layers; // (L) on the device
	sbk_step step;          // its arguments but the rows' count and act_bias, set once
	int step_grid[SBK_STEP_MAX_ROWS + 1]; // blocks for B rows, 0: cannot, -1: not asked yet
	int failed;             // a cuBLAS call failed in the current block
};

static int cuda_fail(sb_error *err, cudaError_t e, const char *what)
{
	return sb_error_set(err, SB_ERR_DEVICE, "cuda: %s: %s", what, cudaGetErrorString(e));
}

#define CK(call)                                                   \
	do {                                                       \
		cudaError_t e_ = (call);                           \
		if (e_ != cudaSuccess)                             \
			return cuda_fail(err, e_, #call);          \
	} while (0)

int sb_cuda_device_name(int device, char *buf, size_t cap, sb_error *err)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess)
		return cuda_fail(err, e, "no usable GPU");
	if (device < 0 || device >= n)
		return sb_error_set(err, SB_ERR_DEVICE, "cuda: device %d does not exist (%d GPU%s)", device,
		                    n, n == 1 ? "" : "s");
	cudaDeviceProp p;
	CK(cudaGetDeviceProperties(&p, device));
	snprintf(buf, cap, "%s", p.name);
	return 0;
}

/* ---------------------------------------------------------------- upload */

static void *dalloc(sb_cuda_ctx *c, size_t bytes, sb_error *err)
{
	void *p = NULL;
	if (c->n_allocs == MAX_ALLOCS) {
		sb_error_set(err, SB_ERR_NOMEM, "cuda: too many device buffers");
		return NULL;
	}
	cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
	if (e != cudaSuccess) {
		sb_error_set(err, SB_ERR_NOMEM, "cuda: cannot allocate %zu bytes of GPU memory: %s", bytes,
		             cudaGetErrorString(e));
		return NULL;
	}
	c->allocs[c->n_allocs++] = p;
	c->dev_bytes += bytes;
	return p;
}

/* The clears and uploads of a context's creation run on its stream, in
 * order with the kernels that read them (the stream is non-blocking: it
 * would not wait for copies on the legacy stream, which may return before
 * they land); creation ends with the stream's sync. */
static void *dzalloc(sb_cuda_ctx *c, size_t bytes, sb_error *err)
{
	void *p = dalloc(c, bytes, err);
	if (p && cudaMemsetAsync(p, 0, bytes ? bytes : 16, c->st) != cudaSuccess) {
		sb_error_set(err, SB_ERR_DEVICE, "cuda: cannot clear GPU memory");
		return NULL;
	}
	return p;
}

static void *dupload(sb_cuda_ctx *c, const void *host, size_t bytes, sb_error *err)
{
	void *p = dalloc(c, bytes, err);
	if (!p)
		return NULL;
	/* from pageable memory: host may be freed as soon as this returns */
	cudaError_t e = cudaMemcpyAsync(p, host, bytes, cudaMemcpyHostToDevice, c->st);
	if (e != cudaSuccess) {
		cuda_fail(err, e, "uploading weights");
		return NULL;
	}
	return p;
}

/* A float vector (n) or NULL. */
static bool up_vec(sb_cuda_ctx *c, const float *h, size_t n, const float **out, sb_error *err)
{
	*out = NULL;
	if (!h)
		return true;
	*out = (const float *)dupload(c, h, n * sizeof(float), err);
	return *out != NULL;
}

static size_t dtype_bytes(sb_dtype dt)
{
	return dt == SB_DTYPE_F32 ? 4 : dt == SB_DTYPE_I8 ? 1 : 2;
}

static bool up_mat(sb_cuda_ctx *c, const sb_cuda_mat *m, sbk_mat *d, sb_error *err)
{
	memset(d, 0, sizeof *d);
	if (m->dtype != SB_DTYPE_F32 && m->dtype != SB_DTYPE_F16 && m->dtype != SB_DTYPE_BF16 &&
	    m->dtype != SB_DTYPE_I8) {
		sb_error_set(err, SB_ERR_UNSUPPORTED, "cuda: weights of dtype %s",
		             sb_dtype_name(m->dtype));
		return false;
	}
	const size_t n = (size_t)m->rows * (size_t)m->cols;
	d->dt = m->dtype;
	d->rows = m->rows;
	d->cols = m->cols;
	if (!(d->w = dupload(c, m->data, n * dtype_bytes(m->dtype), err)))
		return false;
	if (m->dtype == SB_DTYPE_I8) {
		size_t nb = (size_t)m->rows * (size_t)((m->cols + 31) / 32);
		if (!(d->sc = (const __half *)dupload(c, m->scales, nb * 2, err)))
			return false;
	}
	if (m->dtype == SB_DTYPE_F32) {
		d->w32 = (const float *)d->w;
	} else if (m->dtype == SB_DTYPE_F16) {
		/* [W | W]: one tensor-core product takes both halves of x; zero
		 * rows up to a multiple of 8 let a product's result rows be
		 * aligned (cuBLAS picks far slower kernels for 618 rows than
		 * for 624) */
		const size_t rb = (size_t)m->cols * 2;
		d->rows2 = (m->rows + 7) & ~7;
		__half *w2 = (__half *)dzalloc(c, (size_t)d->rows2 * m->cols * 4, err);
		if (!w2)
			return false;
		for (int k = 0; k < 2; k++) {
			cudaError_t e = cudaMemcpy2DAsync((unsigned char *)w2 + k * rb, 2 * rb, d->w, rb, rb,
			                                  (size_t)m->rows, cudaMemcpyDeviceToDevice, c->st);
			if (e != cudaSuccess) {
				cuda_fail(err, e, "uploading weights");
				return false;
			}
		}
		d->w2 = w2;
	} else {
		float *w32 = (float *)dalloc(c, n * sizeof(float), err);
		if (!w32)
			return false;
		sbk_widen(c->ks, d, w32);
		d->w32 = w32;
	}
	return true;
}

static bool up_norm(sb_cuda_ctx *c, const sb_cuda_norm *n, int D, sbk_norm *d, sb_error *err)
{
	d->kind = (int)n->kind;
	d->scalar = n->scalar;
	return up_vec(c, n->weight, (size_t)D, &d->w, err) && up_vec(c, n->bias, (size_t)D, &d->b, err);
}

static bool up_layer(sb_cuda_ctx *c, const sb_cuda_model *m, const sb_cuda_layer_desc *s, dlayer *d,
                     sb_error *err)
{
	const sb_config *cf = m->cfg;
	const size_t D = (size_t)cf->embed_dim, N = (size_t)cf->n_dim, Z = (size_t)cf->z_dim,
	             H = (size_t)cf->hidden_dim, F = (size_t)(cf->ffn_dim > 0 ? cf->ffn_dim : 0),
	             M = (size_t)cf->max_positions;
	memset(d, 0, sizeof *d);
	d->v.inv_tau = s->inv_tau;
	if (!up_norm(c, &s->norm, (int)D, &d->norm, err) || !up_vec(c, s->ema_q, D * N, &d->v.q, err) ||
	    !up_vec(c, s->ema_pb, D * N, &d->v.pb, err) || !up_vec(c, s->ema_g, D * N, &d->v.g, err) ||
	    !up_vec(c, s->omega, D, &d->v.omega, err) || !up_mat(c, &s->hx, &d->hx, err) ||
	    !up_vec(c, s->hx_b, 2 + D, &d->hx_b, err) || !up_mat(c, &s->mx, &d->mx, err) ||
	    !up_vec(c, s->mx_b, Z + 2 * H, &d->mx_b, err) || !up_mat(c, &s->ho, &d->ho, err) ||
	    !up_vec(c, s->ho_b, D, &d->ho_b, err) || !up_vec(c, s->gq, Z, &d->v.gq, err) ||
	    !up_vec(c, s->gk, Z, &d->v.gk, err) || !up_vec(c, s->bq, Z, &d->v.bq, err) ||
	    !up_vec(c, s->bk, Z, &d->v.bk, err) ||
	    !up_vec(c, s->rel_bias, s->rel_bias ? 2 * M - 1 : 0, &d->v.rel_bias, err))
		return false;
	if (F > 0 && (!up_norm(c, &s->ffn_norm, (int)D, &d->ffn_norm, err) ||
	              !up_mat(c, &s->fc1, &d->fc1, err) || !up_vec(c, s->fc1_b, F, &d->fc1_b, err) ||
	              !up_mat(c, &s->fc2, &d->fc2, err) || !up_vec(c, s->fc2_b, D, &d->fc2_b, err)))
		return false;
	return true;
}

/* --------------------------------------------------------------- context */

/* The most bytes a row of the n matrices m takes, at least `most`, over
 * those whose rows the fused step can copy whole (16-byte pieces). */
static int step_slot(const sbk_mat *const *m, int n, int most)
{
	for (int i = 0; i < n; i++) {
		const size_t rb = (size_t)m[i]->cols * sb_dtype_size(m[i]->dt);
		if (rb % 16 == 0 && rb > (size_t)most)
			most = (int)rb;
	}
	return most;
}

/* Whether p (NULL: no table) is 16-byte aligned. */
static bool step_aligned(const void *p)
{
	return ((uintptr_t)p & 15) == 0;
}

/* Whether m's rows are whole 16-byte pieces of a 16-byte aligned matrix. */
static bool step_rows_aligned(const sbk_mat *m)
{
	return (size_t)m->cols * sb_dtype_size(m->dt) % 16 == 0 && step_aligned(m->w);
}

/* Whether a norm's weights are 16-byte aligned. */
static bool step_norm_aligned(const sbk_norm *nm)
{
	return step_aligned(nm->w) && step_aligned(nm->b);
}

void sb_cuda_ctx_free(sb_cuda_ctx *c)
{
	if (!c)
		return;
	cudaSetDevice(c->device);
	if (c->st)
		cudaStreamSynchronize(c->st);
	if (c->graph)
		for (int b = 0; b <= c->R; b++)
			if (c->graph[b])
				cudaGraphExecDestroy(c->graph[b]);
	free(c->graph);
	free(c->graph_bias);
	if (c->blas)
		cublasDestroy(c->blas);
	if (c->blas_tc)
		cublasDestroy(c->blas_tc);
	for (int i = 0; i < c->n_allocs; i++)
		cudaFree(c->allocs[i]);
	cudaFreeHost(c->h_stage);
	cudaFreeHost(c->h_logits);
	cudaFreeHost(c->h_hid);
	cudaFreeHost(c->h_act);
	if (c->st)
		cudaStreamDestroy(c->st);
	free(c->layers);
	free(c->pend);
	free(c);
}

size_t sb_cuda_ctx_device_bytes(const sb_cuda_ctx *c) { return c->dev_bytes; }

static int host_pinned(void **p, size_t bytes, sb_error *err)
{
	cudaError_t e = cudaMallocHost(p, bytes ? bytes : 16);
	if (e != cudaSuccess) {
		*p = NULL;
		return sb_error_set(err, SB_ERR_NOMEM, "cuda: cannot allocate %zu bytes of pinned memory",
		                    bytes);
	}
	return 0;
}

/* A cuBLAS handle on the context's stream in math mode `mode`. */
static int blas_new(sb_cuda_ctx *c, cublasHandle_t *h, cublasMath_t mode, sb_error *err)
{
	if (cublasCreate(h) != CUBLAS_STATUS_SUCCESS) {
		*h = NULL;
		return sb_error_set(err, SB_ERR_DEVICE, "cuda: cuBLAS did not start");
	}
	if (cublasSetStream(*h, c->st) != CUBLAS_STATUS_SUCCESS ||
	    cublasSetMathMode(*h, mode) != CUBLAS_STATUS_SUCCESS)
		return sb_error_set(err, SB_ERR_DEVICE, "cuda: cuBLAS setup failed");
	return 0;
}

int sb_cuda_ctx_new(const sb_cuda_model *m, int device, int max_rows, sb_cuda_ctx **out,
                    sb_error *err)
{
	*out = NULL;
	const sb_config *cf = m->cfg;
	if (cf->n_dim > 256)
		return sb_error_set(err, SB_ERR_UNSUPPORTED,
		                    "cuda: EMA order n_dim %d (the CUDA backend runs at most 256)",
		                    cf->n_dim);
	char name[256];
	int rc = sb_cuda_device_name(device, name, sizeof name, err);
	if (rc < 0)
		return rc;
	CK(cudaSetDevice(device));
	sb_cuda_ctx *c = (sb_cuda_ctx *)calloc(1, sizeof *c);
	if (!c)
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a CUDA context");
	c->device = device;
	const int D = cf->embed_dim, Z = cf->z_dim, H = cf->hidden_dim, W = cf->window,
	          F = cf->ffn_dim > 0 ? cf->ffn_dim : 0, V = cf->vocab_size, L = cf->layers;
	const size_t R = (size_t)max_rows, ZH = (size_t)Z + 2 * (size_t)H;
	c->R = max_rows;
	c->L = L;
	c->prenorm = cf->normalize_before;
	c->ffn = F > 0;
	c->embed_scale = m->embed_scale;
	sbk_geo *g = &c->g;
	g->D = D; g->Z = Z; g->H = H; g->N = cf->n_dim; g->W = W; g->W1 = W + 1;
	g->M = cf->max_positions; g->F = F; g->V = V;
	g->attn = (int)cf->attention;
	g->act = (int)cf->activation;
	g->rotary = cf->rel_pos == SB_POS_ROTARY;
	g->scale = cf->attention == SB_ATTN_SOFTMAX ? 1.0f / sqrtf((float)Z) : 1.0f / (float)W;
	g->n_act = m->off_n_act; g->ring_len = m->off_ring_len; g->ring_head = m->off_ring_head;
	g->ring_pos = m->off_ring_pos; g->h = m->off_h; g->ring_k = m->off_ring_k;
	g->ring_v = m->off_ring_v;
	{
		/* before the fused step copies the geometry */
		const char *ev = getenv("SEQBOAT_CUDA_VEC");
		g->vec = !(ev && !strcmp(ev, "0"));
	}
	c->nch = (W + 1 + SBK_CHUNK - 1) / SBK_CHUNK;
	const size_t nch = (size_t)c->nch, span = (size_t)W + R;

	cudaError_t e = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking);
	if (e != cudaSuccess) {
		c->st = NULL;
		rc = cuda_fail(err, e, "creating a stream");
		goto fail;
	}
	c->ks.s = c->st;
	c->ks.pdl = false; /* plain launches while uploading */
	/* Plain float32 products: no TF32 (the parity tolerance assumes full
	 * float32 products). The split F16 products (gemm.cuh) want tensor
	 * cores: a second handle in the default math mode, float32
	 * accumulation asked for in each call. Both handles share one
	 * workspace (below, so that products can be captured into graphs):
	 * they run in one stream. */
	if ((rc = blas_new(c, &c->blas, CUBLAS_PEDANTIC_MATH, err)) < 0 ||
	    (rc = blas_new(c, &c->blas_tc, CUBLAS_DEFAULT_MATH, err)) < 0)
		goto fail;
	{
		const size_t ws = 32u << 20;
		if (!(c->blas_ws = dalloc(c, ws, err)) ||
		    cublasSetWorkspace(c->blas, c->blas_ws, ws) != CUBLAS_STATUS_SUCCESS ||
		    cublasSetWorkspace(c->blas_tc, c->blas_ws, ws) != CUBLAS_STATUS_SUCCESS) {
			rc = c->blas_ws ? sb_error_set(err, SB_ERR_DEVICE, "cuda: cuBLAS workspace refused")
			                : SB_ERR_NOMEM;
			goto fail;
		}
	}

	/* weights */
	if (!(c->layers = (dlayer *)calloc((size_t)L, sizeof *c->layers))) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a CUDA context");
		goto fail;
	}
	if (!up_mat(c, &m->embed, &c->embed, err))
		goto fail_err;
	if (m->tied)
		c->out = c->embed;
	else if (!up_mat(c, &m->out, &c->out, err))
		goto fail_err;
	if (cf->normalize_before && !up_norm(c, &m->final_norm, D, &c->final_norm, err))
		goto fail_err;
	for (int l = 0; l < L; l++)
		if (!up_layer(c, m, &m->layers[l], &c->layers[l], err))
			goto fail_err;
	if (!(c->d_layers = (const sbk_layer *)dupload(c, c->layers, (size_t)L * sizeof *c->layers,
	                                               err)))
		goto fail_err;
	{
		double *f = (double *)malloc((size_t)(Z / 2 + 1) * sizeof(double));
		if (!f) {
			rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a CUDA context");
			goto fail;
		}
		for (int i = 0; i < Z / 2; i++)
			f[i] = pow(10000.0, -2.0 * (double)i / (double)Z);
		c->inv_freq = (double *)dupload(c, f, (size_t)(Z / 2 + 1) * sizeof(double), err);
		free(f);
		if (!c->inv_freq)
			goto fail_err;
	}

	/* scratch */
#define SCR(field, type, n)                                                       \
	if (!(c->field = (type *)dzalloc(c, (size_t)(n) * sizeof(type), err))) \
		goto fail_err;
	SCR(x, float, R * D)
	SCR(xn, float, R * D)
	SCR(mx, float, R * D)
	SCR(hxu, float, R * (size_t)((D + 2 + 7) & ~7))  // rows D+2 or padded (layer_block)
	SCR(zgv, float, R * ZH)
	SCR(Q, float, R * Z)
	SCR(og, float, R * H)
	SCR(att, float, R * D)
	SCR(ffn_h, float, R * (F ? F : 1))
	SCR(pr1, float, R)
	SCR(S, float, R * span)
	SCR(CK, float, span * Z)
	SCR(CV, float, span * H)
	SCR(cpos, int64_t, span)
	SCR(po, float, R * nch * H)
	SCR(pm, float, R * nch * SBK_STEP_SLABS)  // the fused step's per slab
	SCR(ps, float, R * nch * SBK_STEP_SLABS)
	SCR(logits, float, R * V)
	{
		int kmax = D > H ? D : H;
		kmax = kmax > F ? kmax : F;
		SCR(xh, __half, R * 2 * (size_t)kmax)
	}
	SCR(qh, __half, R * 3 * (size_t)Z)
	SCR(ckh, __half, span * 3 * (size_t)Z)
	SCR(sh, __half, R * 3 * span)
	SCR(cvh, __half, 3 * span * (size_t)H)
	SCR(xe, int, R)
	SCR(qe, int, R)
	SCR(cke, int, span)
	SCR(se, int, R)
	SCR(cve, int, span)
	SCR(ema_scr, float, sbk_ema_scratch((int)R, D, cf->n_dim))
	SCR(hid, float, (size_t)L * R * D)
	SCR(act, uint8_t, (size_t)L * R)
	SCR(arow, int, R)
	SCR(aidx, int, R)
	SCR(nact, int, 1)
	SCR(count, int, R)
	SCR(stage, unsigned char, R * 20)
	SCR(x2, float, R * D)
	SCR(gq, float, (size_t)L * D * cf->n_dim)
	SCR(ec, float, (size_t)L * D)
	SCR(hg, float, R * L * D)
	SCR(cnt, int, R * SBK_STEP_SLABS)
	SCR(gbar, unsigned, 1)
#undef SCR
	c->pos = (int64_t *)c->stage;
	c->blocks = (unsigned char **)(c->stage + R * 8);
	c->tok = (int32_t *)(c->stage + R * 16);
	if ((rc = host_pinned((void **)&c->h_stage, R * 20, err)) < 0 ||
	    (rc = host_pinned((void **)&c->h_logits, R * V * sizeof(float), err)) < 0 ||
	    (rc = host_pinned((void **)&c->h_hid, (size_t)L * R * D * sizeof(float), err)) < 0 ||
	    (rc = host_pinned((void **)&c->h_act, (size_t)L * R, err)) < 0)
		goto fail;
	c->pend = (pending *)calloc((size_t)(2 * L + 4), sizeof *c->pend);
	c->graph = (cudaGraphExec_t *)calloc(R + 1, sizeof *c->graph);
	c->graph_bias = (float *)calloc(R + 1, sizeof *c->graph_bias);
	if (!c->pend || !c->graph || !c->graph_bias) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a CUDA context");
		goto fail;
	}
	{
		const char *ev = getenv("SEQBOAT_CUDA_GRAPHS");
		c->graphs_on = !(ev && !strcmp(ev, "0"));
		/* Decode steps of one row run as the fused kernel (step.cu),
		 * which measured faster there than the per-op graph and slower
		 * at 2 rows and more (docs/benchmarks.md).
		 * SEQBOAT_CUDA_FUSED=1: up to SBK_STEP_MAX_ROWS rows on it; 0:
		 * never. */
		ev = getenv("SEQBOAT_CUDA_FUSED");
		c->step_rows = !ev ? 1 : !strcmp(ev, "1") ? SBK_STEP_MAX_ROWS : !strcmp(ev, "0") ? 0 : 1;
		c->step_on = c->step_rows > 0;
		for (int b = 0; b <= SBK_STEP_MAX_ROWS; b++)
			c->step_grid[b] = -1;
		sbk_step *a = &c->step;
		memset(a, 0, sizeof *a);
		a->g = c->g;
		a->L = L;
		a->R = c->R;
		a->nch = c->nch;
		a->prenorm = c->prenorm;
		a->ffn = c->ffn;
		a->embed_scale = c->embed_scale;
		a->embed = c->embed;
		a->out = c->out;
		a->final_norm = c->final_norm;
		a->layers = c->d_layers;
		a->blocks = c->blocks;
		a->tok = c->tok;
		a->pos = c->pos;
		a->inv_freq = c->inv_freq;
		a->x = c->x;
		a->x2 = c->x2;
		a->hxu = c->hxu;
		a->zgv = c->zgv;
		a->og = c->og;
		a->att = c->att;
		a->ffn_h = c->ffn_h;
		a->pr1 = c->pr1;
		a->po = c->po;
		a->pm = c->pm;
		a->ps = c->ps;
		a->hid = c->hid;
		a->logits = c->logits;
		a->arow = c->arow;
		a->act = c->act;
		a->gq = c->gq;
		a->ec = c->ec;
		a->hg = c->hg;
		a->cnt = c->cnt;
		a->gbar = c->gbar;
		/* SEQBOAT_CUDA_KIND=any: the fused step's generic kernel even
		 * for a model of a kind it has a kernel for (tests, benchmarks) */
		ev = getenv("SEQBOAT_CUDA_KIND");
		a->any_kind = ev && !strcmp(ev, "any");
		/* prefetch slots: the longest rows of phase A's matrices (hx_proj,
		 * mx_proj, the output projection) and of phase C's (h_proj) */
		const sbk_mat *ma[] = {&c->out};
		a->slota = step_slot(ma, 1, 0);
		a->rows_aligned = step_rows_aligned(&c->out);
		a->tables_aligned = a->g.D % 4 == 0 && a->g.Z % 4 == 0 && step_aligned(a->hg) &&
		                    step_aligned(a->ec) && step_norm_aligned(&c->final_norm);
		a->wdt = c->out.dt;
		a->nkind = L > 0 ? c->layers[0].norm.kind : -1;
		if (c->prenorm && c->final_norm.kind != a->nkind)
			a->nkind = -1;
		for (int l = 0; l < L; l++) {
			const sbk_layer *ly = &c->layers[l];
			const sbk_mat *la[] = {&ly->hx, &ly->mx}, *lc[] = {&ly->ho};
			a->slota = step_slot(la, 2, a->slota);
			a->slotc = step_slot(lc, 1, a->slotc);
			a->rows_aligned = a->rows_aligned && step_rows_aligned(&ly->hx) &&
			                  step_rows_aligned(&ly->mx) && step_rows_aligned(&ly->ho);
			a->tables_aligned = a->tables_aligned && step_norm_aligned(&ly->norm) &&
			                    step_aligned(ly->v.gq) && step_aligned(ly->v.gk) &&
			                    step_aligned(ly->v.bq) && step_aligned(ly->v.bk);
			const sbk_mat *all[] = {&ly->hx, &ly->mx, &ly->ho, &ly->fc1, &ly->fc2};
			for (int k = 0; k < (c->ffn ? 5 : 3); k++)
				if (all[k]->dt != a->wdt)
					a->wdt = -1;
			if (ly->norm.kind != a->nkind || (c->ffn && ly->ffn_norm.kind != a->nkind))
				a->nkind = -1;
		}
		if (c->step_on && sbk_step_setup(a) == 0)
			sbk_step_prepare(c->st, a);
		else
			c->step_on = false;
	}
	{
		/* Kernels launch early (programmatic dependent launch) on
		 * compute capability 9.0 and later; SEQBOAT_CUDA_PDL=0 turns it off. */
		int major = 0;
		cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
		const char *ev = getenv("SEQBOAT_CUDA_PDL");
		c->pdl_ok = major >= 9 && !(ev && !strcmp(ev, "0"));
	}
	e = cudaStreamSynchronize(c->st);
	if (e != cudaSuccess) {
		rc = cuda_fail(err, e, "uploading the model");
		goto fail;
	}
	*out = c;
	return 0;
fail_err:
	rc = err ? err->code : SB_ERR_DEVICE;
	if (rc >= 0)
		rc = SB_ERR_DEVICE;
fail:
	sb_cuda_ctx_free(c);
	return rc;
}

/* ---------------------------------------------------------------- states */

int sb_cuda_state_alloc(int device, size_t bytes, void **block, sb_error *err)
{
	*block = NULL;
	CK(cudaSetDevice(device));
	void *p;
	cudaError_t e = cudaMalloc(&p, bytes);
	if (e != cudaSuccess)
		return sb_error_set(err, SB_ERR_NOMEM, "cuda: cannot allocate a state of %zu bytes: %s",
		                    bytes, cudaGetErrorString(e));
	e = cudaMemset(p, 0, bytes);
	if (e == cudaSuccess)
		e = cudaDeviceSynchronize();
	if (e != cudaSuccess) {
		cudaFree(p);
		return cuda_fail(err, e, "clearing a state");
	}
	*block = p;
	return 0;
}

void sb_cuda_state_free(int device, void *block)
{
	if (!block)
		return;
	cudaSetDevice(device);
	cudaFree(block);
}

/* The copies below are synchronous. Context streams do not wait for the
 * legacy default stream (they are non-blocking), so each op first waits
 * for the device (a state is never copied while a block still updates
 * it), and the clears and device-to-device copies, which return before
 * they are done, wait again after (no block reads a state half cleared). */
int sb_cuda_state_zero(int device, void *block, size_t bytes)
{
	if (cudaSetDevice(device) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess ||
	    cudaMemset(block, 0, bytes) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
		return SB_ERR_DEVICE;
	return 0;
}

int sb_cuda_state_copy(int device, void *dst, const void *src, size_t bytes)
{
	if (cudaSetDevice(device) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess ||
	    cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice) != cudaSuccess ||
	    cudaDeviceSynchronize() != cudaSuccess)
		return SB_ERR_DEVICE;
	return 0;
}

int sb_cuda_state_download(int device, const void *block, size_t off, size_t len, void *host)
{
	if (cudaSetDevice(device) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess ||
	    cudaMemcpy(host, (const unsigned char *)block + off, len, cudaMemcpyDeviceToHost) !=
	            cudaSuccess)
		return SB_ERR_DEVICE;
	return 0;
}

int sb_cuda_state_upload(int device, void *block, size_t off, size_t len, const void *host)
{
	if (cudaSetDevice(device) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess ||
	    cudaMemcpy((unsigned char *)block + off, host, len, cudaMemcpyHostToDevice) !=
	            cudaSuccess ||
	    cudaDeviceSynchronize() != cudaSuccess)
		return SB_ERR_DEVICE;
	return 0;
}

/* --------------------------------------------------------------- compute */

static void blas_check(sb_cuda_ctx *c, cublasStatus_t s)
{
	if (s != CUBLAS_STATUS_SUCCESS)
		c->failed = 1;
}

/* Y (T, W.rows) = act(X (T, W.cols) W^T + bias): few rows read W in its
 * own dtype (decode is bound by reading the weights); more rows are, for
 * F16 weights, a split tensor-core product (gemm.cuh; x_split: c->xh
 * already holds X's halves), else a float32 cuBLAS product. rhxu / arow
 * mask rows, on the few-rows path. Y's rows are ldy apart: W.rows, or on
 * the tensor-core path also W.rows2 (the padding columns get zeros). */
static void mm_x(sb_cuda_ctx *c, float *Y, int ldy, const float *X, bool x_split, int T,
                 const sbk_mat *W, const float *bias, int act, const float *rhxu, float act_bias,
                 float inv_tau, const int *arow)
{
	if (T <= SBK_GEMV_MAX_ROWS) {
		sbk_gemv(c->ks, W, X, T, bias, act, Y, rhxu, c->g.D + 2, act_bias, inv_tau, arow);
		return;
	}
	if (W->w2) {
		const int K = W->cols;
		if (!x_split) {
			const sbk_split_out o = {c->xh, 2 * K, (size_t)K, 2, 2u, c->xe};
			sbk_split(c->ks, X, T, K, K, NULL, &o);
		}
		const int M = ldy >= W->rows2 ? W->rows2 : W->rows;
		blas_check(c, sbk_gemm_f16(c->blas_tc, CUBLAS_OP_T, M, T, 2 * K, 1.0f, W->w2, 2 * K, c->xh,
		                           2 * K, Y, ldy));
		sbk_scale_bias_act(c->ks, Y, W->rows, ldy, T, c->xe, bias, act);
		return;
	}
	const float one = 1.0f, zero = 0.0f;
	blas_check(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, W->rows, T, W->cols, &one,
	                          W->w32, W->cols, X, W->cols, &zero, Y, W->rows));
	if (bias || act != SBK_ACT_NONE)
		sbk_scale_bias_act(c->ks, Y, W->rows, W->rows, T, NULL, bias, act);
}

static void mm(sb_cuda_ctx *c, float *Y, const float *X, int T, const sbk_mat *W,
               const float *bias, int act, const float *rhxu, float act_bias, float inv_tau,
               const int *arow)
{
	mm_x(c, Y, W->rows, X, false, T, W, bias, act, rhxu, act_bias, inv_tau, arow);
}

static void ffn_rows(sb_cuda_ctx *c, const dlayer *ly, int T, float *hid)
{
	const int D = c->g.D;
	const float *in = c->x;
	if (c->prenorm) {
		sbk_norm_rows(c->ks, &ly->ffn_norm, c->x, c->xn, T, D);
		in = c->xn;
	}
	mm(c, c->ffn_h, in, T, &ly->fc1, ly->fc1_b, c->g.act, NULL, 0, 0, NULL);
	mm(c, c->att, c->ffn_h, T, &ly->fc2, ly->fc2_b, SBK_ACT_NONE, NULL, 0, 0, NULL);
	sbk_residual(c->ks, c->x, NULL, 0, c->att, NULL, NULL, T, D, c->g.act, true,
	             c->prenorm ? NULL : &ly->ffn_norm, hid, NULL, &c->g, 0);
}

/* Layer l for T rows of one state (block: device pointer). */
static void layer_block(sb_cuda_ctx *c, unsigned char *block, int T, int l, float act_bias,
                        float *hid)
{
	const sbk_geo *g = &c->g;
	const dlayer *ly = &c->layers[l];
	const int D = g->D, Z = g->Z, H = g->H, W = g->W, cols = W + T;
	const float *in = c->x;
	if (c->prenorm) {
		sbk_norm_rows(c->ks, &ly->norm, c->x, c->xn, T, D);
		in = c->xn;
	}
	sbk_ema_scan(c->ks, (float *)(block + g->h) + (size_t)l * D * g->N, &ly->v, in, c->mx, T, D,
	             g->N, g->act, c->ema_scr);
	/* hx_proj's result rows padded to a multiple of 8 on the tensor-core
	 * path (sbk_mat.rows2) */
	const bool hx_tc = ly->hx.w2 != NULL && T > SBK_GEMV_MAX_ROWS;
	const int ldh = hx_tc ? ly->hx.rows2 : D + 2;
	mm_x(c, c->hxu, ldh, c->mx, false, T, &ly->hx, ly->hx_b, SBK_ACT_NONE, NULL, 0, 0, NULL);
	sbk_router_block(c->ks, c->hxu, T, ldh, act_bias, ly->v.inv_tau, c->pr1, c->arow, c->aidx,
	                 c->nact, (uint64_t *)(block + g->n_act) + l, c->act + (size_t)l * c->R);
	/* mx_proj reads the EMA output too: its halves are still in c->xh */
	mm_x(c, c->zgv, ly->mx.rows, c->mx, hx_tc && ly->hx.cols == ly->mx.cols, T, &ly->mx,
	     ly->mx_b, g->act, c->hxu, act_bias, ly->v.inv_tau, NULL);
	/* S (T, cols) = scale * Q CK^T;  og (T, H) = S CV: split products
	 * (gemm.cuh), hi*hi + hi*lo + lo*hi along an inner dimension of three
	 * segments, the halves written by the kernels that make the operands. */
	const sbk_attn_halves ah = {c->qh, c->ckh, c->cvh, c->sh, c->qe, c->cke, c->cve, c->se, cols};
	sbk_ring_span(c->ks, block, g, l, &ah, c->cpos);
	sbk_qk_block(c->ks, g, &ly->v, c->zgv, c->aidx, c->nact, c->pos, c->inv_freq, T, c->Q, c->CK,
	             c->CV, c->cpos, &ah);
	blas_check(c, sbk_gemm_f16(c->blas_tc, CUBLAS_OP_T, cols, T, 3 * Z, g->scale, c->ckh, 3 * Z,
	                           c->qh, 3 * Z, c->S, cols));
	sbk_attn_weights_block(c->ks, g, &ly->v, c->S, T, c->nact,
	                       (const int32_t *)(block + g->ring_len) + l, c->cpos, &ah);
	blas_check(c, sbk_gemm_f16(c->blas_tc, CUBLAS_OP_N, H, T, 3 * cols, 1.0f, c->cvh, H, c->sh,
	                           3 * cols, c->og, H));
	/* h_proj's halves come from the gate kernel where its weights are F16 */
	const bool og_split = ly->ho.w2 != NULL && T > SBK_GEMV_MAX_ROWS;
	sbk_gate_block(c->ks, g, c->og, c->zgv, c->aidx, c->nact, T, c->se, og_split ? c->xh : NULL,
	               c->xe);
	sbk_ring_push_block(c->ks, block, g, l, c->CK, c->CV, c->cpos, c->nact, T);
	mm_x(c, c->att, ly->ho.rows, c->og, og_split, T, &ly->ho, ly->ho_b, SBK_ACT_NONE, NULL, 0, 0,
	     NULL);
	sbk_residual(c->ks, c->x, c->hxu, ldh, c->att, c->arow, c->pr1, T, D, g->act, false,
	             c->prenorm ? NULL : &ly->norm, c->ffn ? NULL : hid, NULL, g, l);
	if (c->ffn)
		ffn_rows(c, ly, T, hid);
}

/* Layer l for B rows of distinct states (c->blocks on the device). */
static void layer_rows(sb_cuda_ctx *c, int B, int l, float act_bias, float *hid)
{
	const sbk_geo *g = &c->g;
	const dlayer *ly = &c->layers[l];
	const int D = g->D;
	sbk_norm_ema_rows(c->ks, c->blocks, g, l, c->prenorm, &ly->norm, &ly->v, c->x, c->mx, B);
	mm(c, c->hxu, c->mx, B, &ly->hx, ly->hx_b, SBK_ACT_NONE, NULL, 0, 0, NULL);
	mm(c, c->zgv, c->mx, B, &ly->mx, ly->mx_b, g->act, c->hxu, act_bias, ly->v.inv_tau, NULL);
	sbk_attn_rows(c->ks, c->blocks, g, &ly->v, l, c->pos, c->hxu, act_bias, c->zgv, c->inv_freq,
	              c->pr1, c->arow, c->act + (size_t)l * c->R, c->po, c->pm, c->ps, c->count,
	              c->og, B);
	mm(c, c->att, c->og, B, &ly->ho, ly->ho_b, SBK_ACT_NONE, NULL, 0, 0, c->arow);
	sbk_residual(c->ks, c->x, c->hxu, D + 2, c->att, c->arow, c->pr1, B, D, g->act, false,
	             c->prenorm ? NULL : &ly->norm, c->ffn ? NULL : hid, c->blocks, g, l);
	if (c->ffn)
		ffn_rows(c, ly, B, hid);
}

/* Logits of rows t0..T-1 into c->logits (row t at t). */
static void logits_rows(sb_cuda_ctx *c, int t0, int T)
{
	const int D = c->g.D, n = T - t0;
	const float *in = c->x + (size_t)t0 * D;
	if (c->prenorm) {
		sbk_norm_rows(c->ks, &c->final_norm, in, c->xn + (size_t)t0 * D, n, D);
		in = c->xn + (size_t)t0 * D;
	}
	mm(c, c->logits + (size_t)t0 * c->g.V, in, n, &c->out, NULL, SBK_ACT_NONE, NULL, 0, 0, NULL);
}

/* A whole decode step of B distinct rows (what a graph holds). */
static void step_rows(sb_cuda_ctx *c, int B, float act_bias)
{
	sbk_embed(c->ks, &c->embed, c->tok, B, c->embed_scale, c->x);
	for (int l = 0; l < c->L; l++)
		layer_rows(c, B, l, act_bias, c->hid + (size_t)l * c->R * c->g.D);
	logits_rows(c, 0, B);
}

static int graph_launch(sb_cuda_ctx *c, int B, float act_bias, sb_error *err)
{
	if (!c->graph[B] || c->graph_bias[B] != act_bias) {
		if (c->graph[B]) {
			cudaGraphExecDestroy(c->graph[B]);
			c->graph[B] = NULL;
		}
		cudaGraph_t gr = NULL;
		CK(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal));
		c->failed = 0;
		step_rows(c, B, act_bias);
		cudaError_t e = cudaStreamEndCapture(c->st, &gr);
		cudaError_t le = cudaGetLastError();
		if (e != cudaSuccess || le != cudaSuccess || c->failed || !gr) {
			/* Some step could not be captured: run without graphs from
			 * now on. */
			if (gr)
				cudaGraphDestroy(gr);
			c->graphs_on = false;
			c->failed = 0;
			return 1;
		}
		cudaGraphExec_t ex = NULL;
		e = cudaGraphInstantiate(&ex, gr, 0);
		cudaGraphDestroy(gr);
		if (e != cudaSuccess) {
			cudaGetLastError();
			c->graphs_on = false;
			return 1;
		}
		c->graph[B] = ex;
		c->graph_bias[B] = act_bias;
	}
	CK(cudaGraphLaunch(c->graph[B], c->st));
	return 0;
}

/* A decode step of B distinct rows as the fused kernel. Returns 1 where it
 * cannot run (the caller takes another path). */
static int step_launch(sb_cuda_ctx *c, int B, float act_bias, sb_error *err)
{
	if (!c->step_on || B > c->step_rows)
		return 1;
	if (c->step_grid[B] < 0)
		c->step_grid[B] = sbk_step_grid(&c->step, B);
	if (c->step_grid[B] == 0)
		return 1;
	sbk_step a = c->step;
	a.B = B;
	a.act_bias = act_bias;
	cudaError_t e = sbk_step_launch(c->st, &a, c->step_grid[B]);
	if (e == cudaErrorCooperativeLaunchTooLarge || e == cudaErrorNotSupported ||
	    e == cudaErrorInvalidConfiguration) {
		/* refused at launch: nothing ran, the per-op kernels take over */
		cudaGetLastError();
		c->step_grid[B] = 0;
		return 1;
	}
	CK(e);
	return 0;
}

static void pend_add(sb_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
	c->pend[c->npend].dst = dst;
	c->pend[c->npend].src = src;
	c->pend[c->npend].bytes = bytes;
	c->npend++;
}

int sb_cuda_sync(sb_cuda_ctx *c, sb_error *err)
{
	cudaError_t e = cudaStreamSynchronize(c->st);
	int failed = c->failed;
	c->failed = 0;
	int n = c->npend;
	c->npend = 0;
	if (e != cudaSuccess)
		return cuda_fail(err, e, "computing a block");
	e = cudaGetLastError();
	if (e != cudaSuccess)
		return cuda_fail(err, e, "launching a kernel");
	if (failed)
		return sb_error_set(err, SB_ERR_DEVICE, "cuda: a cuBLAS product failed");
	for (int i = 0; i < n; i++)
		memcpy(c->pend[i].dst, c->pend[i].src, c->pend[i].bytes);
	return 0;
}

int sb_cuda_embed(sb_cuda_ctx *c, const sb_cuda_rows *r, sb_error *err)
{
	if (c->npend) {
		int rc = sb_cuda_sync(c, err);
		if (rc < 0)
			return rc;
	}
	CK(cudaSetDevice(c->device));
	const int T = r->T;
	const size_t R = (size_t)c->R;
	if (T < 1 || T > c->R)
		return sb_error_set(err, SB_ERR_ARG, "cuda: block of %d rows, at most %d", T, c->R);
	/* One copy of positions, state blocks and tokens. */
	memcpy(c->h_stage, r->pos, (size_t)T * 8);
	memcpy(c->h_stage + R * 8, r->blocks, (size_t)T * sizeof(void *));
	memcpy(c->h_stage + R * 16, r->tokens, (size_t)T * 4);
	CK(cudaMemcpyAsync(c->stage, c->h_stage, R * 20, cudaMemcpyHostToDevice, c->st));
	c->graphed = false;
	c->act_all = false;
	c->failed = 0;
	/* Early launch only where every kernel of the block is ours (few
	 * distinct rows: no cuBLAS product, whose kernels need not wait for
	 * a predecessor that let them start early). */
	c->ks.pdl = c->pdl_ok && r->distinct && T <= SBK_GEMV_MAX_ROWS;
	if (r->distinct) {
		int rc = step_launch(c, T, r->act_bias, err);
		if (rc < 0)
			return rc;
		c->graphed = rc == 0;
	}
	if (!c->graphed && r->distinct && c->graphs_on) {
		int rc = graph_launch(c, T, r->act_bias, err);
		if (rc < 0)
			return rc;
		c->graphed = rc == 0;
	}
	if (!c->graphed)
		sbk_embed(c->ks, &c->embed, c->tok, T, c->embed_scale, c->x);
	CK(cudaGetLastError());
	return 0;
}

int sb_cuda_layer(sb_cuda_ctx *c, const sb_cuda_rows *r, int l, uint8_t *act, float *hidden,
                  sb_error *err)
{
	const int T = r->T, D = c->g.D;
	const size_t R = (size_t)c->R;
	float *hid = c->hid + (size_t)l * R * D;
	if (!c->graphed) {
		if (r->distinct)
			layer_rows(c, T, l, r->act_bias, hidden ? hid : NULL);
		else
			layer_block(c, (unsigned char *)r->blocks[0], T, l, r->act_bias,
			            hidden ? hid : NULL);
		CK(cudaGetLastError());
	}
	if (act) {
		if (!c->graphed)
			CK(cudaMemcpyAsync(c->h_act + l * R, c->act + l * R, (size_t)T,
			                   cudaMemcpyDeviceToHost, c->st));
		else if (!c->act_all) {
			/* every layer's decisions are computed already: one copy */
			CK(cudaMemcpyAsync(c->h_act, c->act, (size_t)c->L * R, cudaMemcpyDeviceToHost,
			                   c->st));
			c->act_all = true;
		}
		pend_add(c, act, c->h_act + l * R, (size_t)T);
	}
	if (hidden) {
		const size_t bytes = (size_t)T * D * sizeof(float);
		CK(cudaMemcpyAsync(c->h_hid + l * R * D, hid, bytes, cudaMemcpyDeviceToHost, c->st));
		pend_add(c, hidden, c->h_hid + l * R * D, bytes);
	}
	return 0;
}

int sb_cuda_logits(sb_cuda_ctx *c, const sb_cuda_rows *r, int t0, float *dst, sb_error *err)
{
	const int T = r->T, V = c->g.V;
	if (!c->graphed) {
		logits_rows(c, t0, T);
		CK(cudaGetLastError());
	}
	const size_t bytes = (size_t)(T - t0) * V * sizeof(float);
	CK(cudaMemcpyAsync(c->h_logits + (size_t)t0 * V, c->logits + (size_t)t0 * V, bytes,
	                   cudaMemcpyDeviceToHost, c->st));
	pend_add(c, dst, c->h_logits + (size_t)t0 * V, bytes);
	return 0;
}
