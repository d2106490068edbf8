/*
 * step.cu - the fused decode step: a whole step of a few rows of distinct
 * states (embedding, every layer, the logits) as ONE cooperative kernel.
 *
 * At batch 1 a token is a few megabytes of weights: what bounds the
 * per-op kernels is not bandwidth but their count (87 kernels a step,
 * each a small grid waiting on its predecessor). Here every block of the
 * grid stays resident and the phases of a layer are separated by grid
 * barriers instead of kernel boundaries. What costs is the barriers and
 * the trips to memory after each, so a layer has as few as its data
 * allow, and what does not depend on the phase before is fetched before
 * its barrier:
 *
 *   P0  (once a step) the embedding, and the EMA's state term of every
 *       layer, hg = sum_n (g q) h over the state before the step
 *   A   every block: x, its norm, mx = act(hg + u ec) of every channel
 *       and the router (so every block knows the decisions); then
 *       hx_proj and mx_proj, a warp per output row, and the EMA's new
 *       state, an element a thread
 *   B   (only if some row is activated) the attention over each activated
 *       row's ring: a block per chunk of SBK_CHUNK entries and slab of the
 *       value columns; the last block of a slab combines its chunks, times
 *       the gate
 *   C   (only if some row is activated) h_proj and the residual, a warp
 *       per output row; the ring counters advance
 *   A layer no row activates has no B or C: every block computes its
 *   residual itself at the start of the next layer's A (or of the logits),
 *   so it is one barrier; one that some row activates is three. (Post-norm
 *   models normalize x after a barrier; with an FFN, fc1 and fc2 +
 *   residual are two more phases.) Then the final norm and the output
 *   projection.
 *
 * Each warp copies the weight rows it will read in the next phase into its
 * own shared memory (cp.async) before the barrier, with their biases; the
 * layers' descriptors and the norms' weights are read into shared memory
 * too; rows other blocks wrote are read from L2 (__ldcg: L1 is not
 * coherent between blocks).
 *
 * It is the default for one row (on the H200 5 to 14% faster than the
 * per-op graph, docs/benchmarks.md) and slower from two rows on, where the
 * per-op kernels keep the step (SEQBOAT_CUDA_FUSED=1: up to 8 rows here).
 *
 * The arithmetic is that of the per-op kernels (the same device functions:
 * gemv_row, attn_chunk, attn_combine, the router) but for the EMA, whose
 * sum is split in two (the same terms, rounded in another order): the
 * paths agree to float rounding.
 */
#include <cooperative_groups.h>

#include "device.cuh"

namespace cg = cooperative_groups;

#define STEP_THREADS 512
#define STEP_WARPS (STEP_THREADS / 32)
#define STEP_PF_MAX 2  // weight rows a warp prefetches a phase ahead, at most

/* ---- asynchronous copies to shared memory (sm_80 and later) */

static __device__ __forceinline__ void cp16(void *dst, const void *src)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
	const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
#else
	*(uint4 *)dst = *(const uint4 *)src;
#endif
}

static __device__ __forceinline__ void cp_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
	asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

/* Waits until at most N of this thread's latest groups are in flight,
 * then for the warp (its lanes copied parts of the same rows). */
template <int N>
static __device__ __forceinline__ void cp_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
	asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
	__syncwarp();
}

/* Whether row copies of W fit slots of `slot` bytes (whole 16-byte
 * pieces, aligned). */
static __device__ __forceinline__ bool pf_fits(const sbk_mat &W, int slot)
{
	const size_t rb = (size_t)W.cols * wsize(W.dt);
	return slot > 0 && rb <= (size_t)slot && (rb & 15) == 0 && ((uintptr_t)W.w & 15) == 0;
}

/* Row r of W into dst, by the warp. */
static __device__ __forceinline__ void pf_row(const sbk_mat &W, int r, unsigned char *dst)
{
	const size_t rb = (size_t)W.cols * wsize(W.dt);
	const unsigned char *src = (const unsigned char *)W.w + (size_t)r * rb;
	for (size_t u = threadIdx.x & 31; u < rb / 16; u += 32)
		cp16(dst + 16 * u, src + 16 * u);
}

/* ---- helpers */

/* rows (B, n) of src (row stride ld, written by other blocks) into
 * shared dst (row stride n). */
static __device__ void stage(float *dst, const float *src, int B, int n, int ld)
{
	__syncthreads();
	for (int i = threadIdx.x; i < B * n; i += blockDim.x)
		dst[i] = __ldcg(src + (size_t)(i / n) * ld + i % n);
	__syncthreads();
}

/* The B rows in shared memory, each normalized by its own warp. */
static __device__ void norm_rows(const sbk_norm &nm, float *xs, int B, int D)
{
	const int w = threadIdx.x >> 5;
	if (w < B)
		warp_norm(nm, xs + (size_t)w * D, D);
	__syncthreads();
}

/* acc[b] = row (given as its first weight and scales) of a matrix of
 * W's dtype and columns, . xs[b]. */
template <int NB>
static __device__ __forceinline__ void dot_row(const sbk_mat &W, const void *row, const __half *rsc,
                                               const float *xs, int B, float *acc)
{
	switch (W.dt) {
	case SB_DTYPE_F16:
		gemv_row<SB_DTYPE_F16, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	case SB_DTYPE_BF16:
		gemv_row<SB_DTYPE_BF16, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	case SB_DTYPE_I8:
		gemv_row<SB_DTYPE_I8, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	default:
		gemv_row<SB_DTYPE_F32, NB>(row, rsc, W.cols, xs, B, acc);
		break;
	}
}

static __device__ __forceinline__ const __half *row_scales(const sbk_mat &W, int r)
{
	return W.sc ? W.sc + (size_t)r * ((W.cols + 31) >> 5) : NULL;
}

/* acc[b] = row r of W . xs[b], from the slot where it was prefetched
 * (slot not NULL and the rows fit slots of `bytes`) or from W. */
template <int NB>
static __device__ __forceinline__ void dot_rows(const sbk_mat &W, int r, const unsigned char *slot,
                                                int bytes, const float *xs, int B, float *acc)
{
	const void *row = slot && pf_fits(W, bytes)
	                  ? (const void *)slot
	                  : (const void *)((const unsigned char *)W.w +
	                                   (size_t)r * W.cols * wsize(W.dt));
	dot_row<NB>(W, row, row_scales(W, r), xs, B, acc);
}

/* Phase A's k-th output row of warp gw (of nwarps), or false past them:
 * hx_proj's rows 2 .. D+1 then mx_proj's; after the last layer the output
 * projection's. */
static __device__ __forceinline__ bool a_row(const sbk_step &a, const sbk_layer *sl, int l, int gw,
                                             int nwarps, int k, const sbk_mat **W, int *r,
                                             const float **bias, float **y, int *ld, int *act)
{
	const int D = a.g.D, ZH = a.g.Z + 2 * a.g.H, i = gw + k * nwarps;
	if (l == a.L) {
		if (i >= a.g.V)
			return false;
		*W = &a.out;
		*r = i;
		*bias = NULL;
		*y = a.logits + i;
		*ld = a.g.V;
		*act = SBK_ACT_NONE;
		return true;
	}
	const sbk_layer &ly = sl[l];
	if (i < D) {
		*W = &ly.hx;
		*r = i + 2;
		*bias = ly.hx_b + i + 2;
		*y = a.hxu + i + 2;
		*ld = D + 2;
		*act = SBK_ACT_NONE;
		return true;
	}
	if (i >= D + ZH)
		return false;
	*W = &ly.mx;
	*r = i - D;
	*bias = ly.mx_b + i - D;
	*y = a.zgv + i - D;
	*ld = ZH;
	*act = a.g.act;
	return true;
}

/* v[i] of a small array kept in registers (i < N; indexed by unrolled
 * comparisons, not through local memory). */
template <int N>
static __device__ __forceinline__ float pick(const float *v, int i)
{
	float t = v[0];
#pragma unroll
	for (int j = 1; j < N; j++)
		if (i == j)
			t = v[j];
	return t;
}

/* Phase A's products of layer l (l == L: the output projection) over the
 * B rows x, a warp per output row, from the warp's slots pfw where they
 * were prefetched, with the biases read a phase ahead (bia); lane b writes
 * row b's result. */
template <int NB>
static __device__ __forceinline__ void a_products(const sbk_step &a, const sbk_layer *sl, int l,
                                                  int gw, int nwarps, const unsigned char *pfw,
                                                  const float *x, int B, const float *bia)
{
	const int lane = threadIdx.x & 31;
	for (int k = 0;; k++) {
		const sbk_mat *W;
		int r, ld, act;
		const float *bias;
		float *y;
		if (!a_row(a, sl, l, gw, nwarps, k, &W, &r, &bias, &y, &ld, &act))
			break;
		const float bv = !bias ? 0.0f : k < a.pfa ? pick<STEP_PF_MAX>(bia, k) : *bias;
		float acc[NB];
		dot_rows<NB>(*W, r, k < a.pfa ? pfw + (size_t)k * a.slota : NULL, a.slota, x, B, acc);
		if (lane < B) {
			const float t = pick<NB>(acc, lane);
			y[(size_t)lane * ld] = apply_act(act, bias ? t + bv : t);
		}
	}
}

/* nm with its weights copied by the block into w and b (D each; shared
 * memory), for norms read again and again in one phase; the caller syncs
 * the block before using it. */
static __device__ sbk_norm shared_norm(const sbk_norm &nm, float *w, float *b, int D)
{
	sbk_norm s = nm;
	if (!nm.w)
		return s;
	for (int d = threadIdx.x; d < D; d += blockDim.x) {
		w[d] = nm.w[d];
		b[d] = nm.b ? nm.b[d] : 0.0f;
	}
	s.w = w;
	s.b = nm.b ? b : NULL;
	return s;
}

/* Issues the copies of phase A's rows of layer l (l == L: the output
 * projection's) into the warp's slots pfw, and of the router's rows (warps
 * 0 and 1) into pfr; then commits them as one group. Their biases are
 * read meanwhile, into bias (STEP_PF_MAX) and rbias (the router's). */
static __device__ __forceinline__ void pf_a(const sbk_step &a, const sbk_layer *sl, int l, int gw,
                                            int nwarps, unsigned char *pfw, unsigned char *pfr,
                                            float *bias, float *rbias)
{
	const int w = threadIdx.x >> 5;
	if (l < a.L && w < 2) {
		if (pf_fits(sl[l].hx, a.slota))
			pf_row(sl[l].hx, w, pfr + (size_t)w * a.slota);
		*rbias = sl[l].hx_b[w];
	}
#pragma unroll
	for (int k = 0; k < STEP_PF_MAX; k++) {
		const sbk_mat *W;
		int r, ld, act;
		const float *bp;
		float *y;
		if (k >= a.pfa || !a_row(a, sl, l, gw, nwarps, k, &W, &r, &bp, &y, &ld, &act))
			break;
		if (pf_fits(*W, a.slota))
			pf_row(*W, r, pfw + (size_t)k * a.slota);
		bias[k] = bp ? *bp : 0.0f;
	}
	cp_commit();
}

/* Issues the copies of phase C's rows (h_proj) of layer l. */
static __device__ void pf_c(const sbk_step &a, const sbk_layer *sl, int l, int gw, int nwarps,
                            unsigned char *pfw)
{
	const sbk_mat &W = sl[l].ho;
	if (pf_fits(W, a.slotc))
		for (int k = 0; k < a.pfc; k++) {
			const int r = gw + k * nwarps;
			if (r >= a.g.D)
				break;
			pf_row(W, r, pfw + (size_t)k * a.slotc);
		}
	cp_commit();
}

/* A post-norm layer's (or FFN's) rows y (B, D), complete after a barrier,
 * normalized into x (and hid): block b takes row b. */
static __device__ void post_norm(const sbk_step &a, const sbk_norm &nm, const float *y, float *x,
                                 float *xs, float *hid)
{
	const int D = a.g.D, b = blockIdx.x;
	if (b >= a.B)
		return;
	stage(xs, y + (size_t)b * D, 1, D, D);
	if (threadIdx.x < 32)
		warp_norm(nm, xs, D);
	__syncthreads();
	for (int d = threadIdx.x; d < D; d += blockDim.x) {
		x[(size_t)b * D + d] = xs[d];
		if (hid)
			hid[(size_t)b * D + d] = xs[d];
	}
}

/* The widest row the kernel stages in shared memory: max(D, H, F). */
static __host__ __device__ int step_wide(const sbk_geo &g)
{
	const int w = g.D > g.H ? g.D : g.H;
	return g.F > w ? g.F : w;
}

/* Bytes of the warps' prefetch slots (and the router's two), first in
 * shared memory. */
static __host__ __device__ size_t step_pf_bytes(const sbk_step &a)
{
	return (size_t)STEP_WARPS * ((size_t)a.pfa * a.slota + (size_t)a.pfc * a.slotc) +
	       2 * (size_t)a.slota;
}

/* Where the layers' descriptors are in shared memory (after the slots),
 * and where the rows of floats begin. */
static __host__ __device__ size_t step_layers_at(const sbk_step &a)
{
	return step_pf_bytes(a);
}

static __host__ __device__ size_t step_floats_at(const sbk_step &a)
{
	return step_layers_at(a) + (((size_t)a.L * sizeof(sbk_layer) + 15) & ~(size_t)15);
}

/* The value columns of slab s of ns: multiples of 4. */
static __device__ __forceinline__ void slab_cols(int H, int s, int ns, int *h0, int *h1)
{
	const int w = ((H + ns - 1) / ns + 3) & ~3;
	*h0 = s * w < H ? s * w : H;
	*h1 = *h0 + w < H ? *h0 + w : H;
}

template <int NB>
__global__ void __launch_bounds__(STEP_THREADS, 1) k_step(sbk_step a)
{
	extern __shared__ __align__(16) unsigned char smem[];
	__shared__ float sc[SBK_CHUNK];
	__shared__ int slots[SBK_CHUNK];
	__shared__ float uq[2][NB], p1s[NB];
	__shared__ unsigned live_s;
	__shared__ int last_s;
	const sbk_geo &g = a.g;
	const int D = g.D, Z = g.Z, H = g.H, F = g.F, N = g.N, L = a.L, ZH = Z + 2 * H, D2 = D + 2,
	          B = a.B;
	const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
	const int gw = blockIdx.x * STEP_WARPS + w, nwarps = gridDim.x * STEP_WARPS;
	const int gt = blockIdx.x * blockDim.x + tid, nthreads = gridDim.x * blockDim.x;
	const size_t RD = (size_t)a.R * D;
	cg::grid_group grid = cg::this_grid();

	/* shared memory: the prefetch slots, then rows of floats */
	unsigned char *pfa_w = smem + (size_t)w * ((size_t)a.pfa * a.slota + (size_t)a.pfc * a.slotc);
	unsigned char *pfc_w = pfa_w + (size_t)a.pfa * a.slota;
	unsigned char *pfr = smem + (size_t)STEP_WARPS * ((size_t)a.pfa * a.slota + (size_t)a.pfc * a.slotc);
	float *xr = (float *)(smem + step_floats_at(a));   // (NB, D) x, as it enters the layer
	float *xs = xr + (size_t)NB * D;                  // (NB, wide) its norm u; og; the FFN's hidden
	float *ms = xs + (size_t)NB * step_wide(g);       // (NB, D) hg, then mx
	float *ecs = ms + (size_t)NB * D;                 // (D)
	float *nws = ecs + D, *nbs = nws + D;             // (D) each: the norm's weights
	float *qs = nbs + D, *kn = qs + Z, *wk = kn + Z;  // (Z), (Z), (nch)
	sbk_layer *sl = (sbk_layer *)(smem + step_layers_at(a));  // (L) the layers' descriptors

	/* P0: the layers' descriptors, the embedding and the EMA's state terms */
	for (size_t i = tid; i < (size_t)L * sizeof(sbk_layer) / 4; i += blockDim.x)
		((uint32_t *)sl)[i] = ((const uint32_t *)a.layers)[i];
	__syncthreads();
	float bia[STEP_PF_MAX] = {}, rbia = 0.0f;  // phase A's biases, read a phase ahead
	pf_a(a, sl, 0, gw, nwarps, pfa_w, pfr, bia, &rbia);
	for (int i = gt; i < B * D; i += nthreads) {
		const int b = i / D, d = i % D;
		a.x[i] = wget(a.embed.dt, a.embed.w, a.embed.sc, a.tok[b], d, D) * a.embed_scale;
	}
	for (int i = gt; i < L * D; i += nthreads) {
		const float *gq = a.gq + (size_t)i * N;
		for (int b = 0; b < B; b++) {
			const float *h = (const float *)(a.blocks[b] + g.h) + (size_t)i * N;
			float s = 0.0f;
			if ((N & 3) == 0 && (((uintptr_t)h | (uintptr_t)gq) & 15) == 0) {
#pragma unroll 4
				for (int n = 0; n < N; n += 4) {
					const float4 q4 = *(const float4 *)(gq + n), h4 = *(const float4 *)(h + n);
					s = fmaf(q4.x, h4.x, s);
					s = fmaf(q4.y, h4.y, s);
					s = fmaf(q4.z, h4.z, s);
					s = fmaf(q4.w, h4.w, s);
				}
			} else {
#pragma unroll 4
				for (int n = 0; n < N; n++)
					s = fmaf(gq[n], h[n], s);
			}
			a.hg[(size_t)b * L * D + i] = s;
		}
	}
	grid.sync();

	float *xc = a.x, *xo = a.x2;   // the residual stream now, and the other buffer
	bool have_x = false;           // xr holds x already (a layer without attention)
	for (int l = 0; l < L; l++) {
		const sbk_layer &ly = sl[l];
		const sbk_layer_vecs &v = ly.v;
		float *hid = a.hid + (size_t)l * RD;
		const bool post = !a.prenorm, last = !a.ffn;

		/* A: its h_proj rows are copied while it runs */
		pf_c(a, sl, l, gw, nwarps, pfc_w);
		/* the EMA elements this thread updates, fetched with the rows */
		float eh[2] = {0.0f, 0.0f}, eq[2] = {0.0f, 0.0f}, ep[2] = {0.0f, 0.0f};
		float *ehp[2] = {NULL, NULL};
		const int DN = D * N;
#pragma unroll
		for (int k = 0; k < 2; k++) {
			const int e = gt + k * nthreads;
			if (e < B * DN) {
				const int b = e / DN, j = e % DN;
				ehp[k] = (float *)(a.blocks[b] + g.h) + (size_t)l * DN + j;
				eh[k] = *ehp[k];
				eq[k] = v.q[j];
				ep[k] = v.pb[j];
			}
		}
		__syncthreads();
		for (int i = tid; i < B * D; i += blockDim.x) {
			const int b = i / D, d = i % D;
			if (!have_x)
				xr[i] = __ldcg(xc + i);
			ms[i] = __ldcg(a.hg + ((size_t)b * L + l) * D + d);
		}
		for (int d = tid; d < D; d += blockDim.x)
			ecs[d] = a.ec[(size_t)l * D + d];
		const sbk_norm lnorm = shared_norm(ly.norm, nws, nbs, D);
		__syncthreads();
		for (int i = tid; i < B * D; i += blockDim.x)
			xs[i] = xr[i];
		__syncthreads();
		if (a.prenorm)
			norm_rows(lnorm, xs, B, D);
		for (int i = tid; i < B * D; i += blockDim.x)
			ms[i] = apply_act(g.act, ms[i] + xs[i] * ecs[i % D]);
		__syncthreads();
		cp_wait<1>();  // this phase's rows (the h_proj rows may still be in flight)
		if (w < 2) {
			float acc[NB];
			dot_rows<NB>(ly.hx, w, pfr + (size_t)w * a.slota, a.slota, ms, B, acc);
			if (lane == 0)
				for (int b = 0; b < B; b++)
					uq[w][b] = acc[b] + rbia;
		}
		a_products<NB>(a, sl, l, gw, nwarps, pfa_w, ms, B, bia);
		__syncwarp();
		pf_a(a, sl, l + 1, gw, nwarps, pfa_w, pfr, bia, &rbia);
		/* the EMA's new state */
#pragma unroll
		for (int k = 0; k < 2; k++)
			if (ehp[k]) {
				const int e = gt + k * nthreads, b = e / DN, d = (e % DN) / N;
				*ehp[k] = eq[k] * eh[k] + ep[k] * xs[(size_t)b * D + d];
			}
		for (int e = gt + 2 * nthreads; e < B * DN; e += nthreads) {
			const int b = e / DN, j = e % DN;
			float *h = (float *)(a.blocks[b] + g.h) + (size_t)l * DN + j;
			*h = v.q[j] * *h + v.pb[j] * xs[(size_t)b * D + j / N];
		}
		__syncthreads();
		if (tid == 0) {
			unsigned live = 0;
			for (int b = 0; b < B; b++) {
				const float u[2] = {uq[0][b], uq[1][b]};
				float p;
				if (router(u, a.act_bias, v.inv_tau, &p))
					live |= 1u << b;
				p1s[b] = p;
				if (blockIdx.x == 0) {
					a.pr1[b] = p;
					a.arow[b] = (live >> b) & 1 ? b : -1;
					a.act[(size_t)l * a.R + b] = (live >> b) & 1;
					a.hxu[(size_t)b * D2] = u[0];
					a.hxu[(size_t)b * D2 + 1] = u[1];
				}
			}
			live_s = live;
		}
		grid.sync();
		const unsigned live = live_s;
		int nlive = 0;
		for (int b = 0; b < B; b++)
			if ((live >> b) & 1)
				nlive = b + 1;  // rows past the last activated one are skipped

		if (!live && !a.ffn) {
			/* No attention: every block takes the residual itself, x
			 * stays in xr for the next layer (or the logits) and block
			 * 0 keeps the stream in the other buffer. */
			cp_wait<1>();  // the unused h_proj rows are in before their slots are reused
			for (int i = tid; i < B * D; i += blockDim.x) {
				const int b = i / D, d = i % D;
				xr[i] = apply_act(g.act, __ldcg(a.hxu + (size_t)b * D2 + 2 + d) + xr[i]);
			}
			__syncthreads();
			if (post)
				norm_rows(lnorm, xr, B, D);
			if (blockIdx.x == 0)
				for (int i = tid; i < B * D; i += blockDim.x) {
					xo[i] = xr[i];
					hid[i] = xr[i];
				}
			float *t = xc;
			xc = xo;
			xo = t;
			have_x = true;
			continue;
		}
		have_x = false;
		/* phase C's first row's addends, lane b for row b: read now */
		float c_hx = 0.0f, c_x = 0.0f, c_b = 0.0f;
		if (gw < D && lane < B) {
			c_hx = __ldcg(a.hxu + (size_t)lane * D2 + 2 + gw);
			c_x = __ldcg(xc + (size_t)lane * D + gw);
			c_b = ly.ho_b[gw];
		}

		/* B: the attention of the activated rows */
		if (live) {
			/* slabs: as many as keep every block busy, up to SBK_STEP_SLABS */
			int nrows = 0, maxc = 1;
			for (int b = 0; b < B; b++)
				if ((live >> b) & 1) {
					const int32_t len = ((const int32_t *)(a.blocks[b] + g.ring_len))[l];
					const int nc = ((len < g.W1 ? len + 1 : g.W1) + SBK_CHUNK - 1) / SBK_CHUNK;
					nrows++;
					maxc = nc > maxc ? nc : maxc;
				}
			int ns = (int)gridDim.x / (nrows * maxc);
			ns = ns < 1 ? 1 : ns > SBK_STEP_SLABS ? SBK_STEP_SLABS : ns;
			const int items = B * a.nch * ns;
			for (int item = blockIdx.x; item < items; item += gridDim.x) {
				const int b = item / (a.nch * ns);
				const int c = item / ns % a.nch, s = item % ns;
				if (!((live >> b) & 1))
					continue;
				int h0, h1;
				slab_cols(H, s, ns, &h0, &h1);
				/* po (R, nch, H) by chunk; pm, ps (R, SLABS, nch): each
				 * slab's own, so that its last block reads only what
				 * its own chunks wrote */
				const size_t pc = (size_t)b * a.nch + c,
				             pq = ((size_t)b * SBK_STEP_SLABS + s) * a.nch;
				const float *z = a.zgv + (size_t)b * ZH;
				__syncthreads();
				const int nc = attn_chunk(a.blocks[b], g, v, l, a.pos[b], z, a.inv_freq, c,
				                          a.po + pc * H, a.pm + pq + c, a.ps + pq + c, qs, kn, sc, slots,
				                          h0, h1, s == 0);
				if (c >= nc)
					continue;
				/* the slab's last chunk combines them */
				__threadfence();
				__syncthreads();
				if (tid == 0)
					last_s = atomicAdd(&a.cnt[b * SBK_STEP_SLABS + s], 1) == nc - 1;
				__syncthreads();
				if (!last_s)
					continue;
				__threadfence();
				attn_combine(a.pm + pq, a.ps + pq,
				             a.po + (size_t)b * a.nch * H, nc, H, g.attn == SB_ATTN_SOFTMAX,
				             z + Z, a.og + (size_t)b * H, wk, h0, h1);
				if (tid == 0)
					a.cnt[b * SBK_STEP_SLABS + s] = 0;
			}
			grid.sync();
			stage(xs, a.og, nlive, H, H);
		}

		/* C: h_proj and the residual (what it adds read before the
		 * product: lane b for row b) */
		cp_wait<1>();
		for (int k = 0;; k++) {
			const int r = gw + k * nwarps;
			if (r >= D)
				break;
			float acc[NB];
			if (k > 0 && lane < B) {
				c_hx = __ldcg(a.hxu + (size_t)lane * D2 + 2 + r);
				c_x = __ldcg(xc + (size_t)lane * D + r);
				c_b = ly.ho_b[r];
			}
			dot_rows<NB>(ly.ho, r, k < a.pfc ? pfc_w + (size_t)k * a.slotc : NULL, a.slotc, xs,
			             live ? nlive : 0, acc);
			if (lane < B) {
				const int b = lane;
				const float t = pick<NB>(acc, b);
				const size_t i = (size_t)b * D + r;
				const float at = (live >> b) & 1 ? (t + c_b) * p1s[b] : 0.0f;
				const float y = apply_act(g.act, c_hx + at + c_x);
				if (post) {
					a.att[i] = y;
				} else {
					xc[i] = y;
					if (last)
						hid[i] = y;
				}
			}
		}
		if (blockIdx.x == 0 && tid < B && (live >> tid) & 1) {
			unsigned char *blk = a.blocks[tid];
			int32_t *len = (int32_t *)(blk + g.ring_len) + l,
			        *head = (int32_t *)(blk + g.ring_head) + l;
			int32_t ln = *len, hd = *head;
			sb_ring_push(&ln, &hd, g.W1);
			*len = ln;
			*head = hd;
			((uint64_t *)(blk + g.n_act))[l]++;
		}
		grid.sync();
		if (post) {
			post_norm(a, ly.norm, a.att, xc, xs, last ? hid : NULL);
			grid.sync();
		}

		/* the feed-forward block */
		if (a.ffn) {
			stage(xs, xc, B, D, D);
			if (a.prenorm)
				norm_rows(ly.ffn_norm, xs, B, D);
			for (int r = gw; r < F; r += nwarps) {
				float acc[NB];
				dot_rows<NB>(ly.fc1, r, NULL, 0, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++)
						a.ffn_h[(size_t)b * F + r] = apply_act(g.act, acc[b] + ly.fc1_b[r]);
			}
			grid.sync();
			stage(xs, a.ffn_h, B, F, F);
			for (int r = gw; r < D; r += nwarps) {
				float acc[NB];
				dot_rows<NB>(ly.fc2, r, NULL, 0, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++) {
						const size_t i = (size_t)b * D + r;
						const float y = __ldcg(xc + i) + acc[b] + ly.fc2_b[r];
						if (post) {
							a.att[i] = y;
						} else {
							xc[i] = y;
							hid[i] = y;
						}
					}
			}
			grid.sync();
			if (post) {
				post_norm(a, ly.ffn_norm, a.att, xc, xs, hid);
				grid.sync();
			}
		}
	}

	/* the final norm and the output projection */
	__syncthreads();
	for (int i = tid; i < B * D; i += blockDim.x)
		xs[i] = have_x ? xr[i] : __ldcg(xc + i);
	__syncthreads();
	if (a.prenorm) {
		const sbk_norm fn = shared_norm(a.final_norm, nws, nbs, D);
		__syncthreads();
		norm_rows(fn, xs, B, D);
	}
	cp_wait<0>();
	a_products<NB>(a, sl, L, gw, nwarps, pfa_w, xs, B, bia);
}

/* gq = g * q (L, D, N) and ec = sum_n g pb + omega (L, D), a thread an
 * (l, d). */
__global__ void k_step_prepare(sbk_step a)
{
	const int D = a.g.D, N = a.g.N;
	const int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= a.L * D)
		return;
	const sbk_layer_vecs &v = a.layers[i / D].v;
	const int d = i % D;
	float e = 0.0f;
	for (int n = 0; n < N; n++) {
		const size_t k = (size_t)d * N + n;
		a.gq[(size_t)i * N + n] = v.g[k] * v.q[k];
		e = fmaf(v.g[k], v.pb[k], e);
	}
	a.ec[i] = e + v.omega[d];
}

void sbk_step_prepare(cudaStream_t s, const sbk_step *a)
{
	const int n = a->L * a->g.D;
	k_step_prepare<<<(n + 255) / 256, 256, 0, s>>>(*a);
}

/* Shared memory of the kernel for NB rows: the prefetch slots, the
 * layers' descriptors, xr, xs, ms (NB rows each), ec, the norm's weights,
 * qs, kn and the chunk weights of a combine. */
static size_t step_shmem(const sbk_step *a, int NB)
{
	const sbk_geo &g = a->g;
	const size_t nch = ((size_t)g.W1 + SBK_CHUNK - 1) / SBK_CHUNK;
	return step_floats_at(*a) + ((size_t)NB * (2 * (size_t)g.D + (size_t)step_wide(g)) +
	                             3 * (size_t)g.D + 2 * (size_t)g.Z + nch) * sizeof(float);
}

static int rows_nb(int B)
{
	return B <= 1 ? 1 : B <= 2 ? 2 : B <= 4 ? 4 : 8;
}

typedef void (*step_kernel)(sbk_step);

static step_kernel kernel_for(int B)
{
	return B <= 1 ? k_step<1> : B <= 2 ? k_step<2> : B <= 4 ? k_step<4> : k_step<8>;
}

int sbk_step_setup(sbk_step *a)
{
	int dev = 0, sms = 0, coop = 0, optin = 0;
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop ||
	    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
	            cudaSuccess) {
		cudaGetLastError();
		return -1;
	}
	/* a->slota, a->slotc: the longest rows of the two phases' matrices
	 * (the caller's, from its host copies of their shapes) */
	const sbk_geo &g = a->g;
	const int nwarps = sms * STEP_WARPS;
	const int ra = (g.D + g.Z + 2 * g.H + nwarps - 1) / nwarps, rc = (g.D + nwarps - 1) / nwarps;
	a->pfa = ra < STEP_PF_MAX ? ra : STEP_PF_MAX;
	a->pfc = rc < STEP_PF_MAX ? rc : STEP_PF_MAX;
	if (a->slota <= 0 || a->slotc <= 0 || step_shmem(a, SBK_STEP_MAX_ROWS) > (size_t)optin) {
		a->pfa = a->pfc = 0;
		a->slota = a->slotc = 0;
	}
	return step_shmem(a, SBK_STEP_MAX_ROWS) > (size_t)optin ? -1 : 0;
}

int sbk_step_grid(const sbk_step *a, int B)
{
	if (B < 1 || B > SBK_STEP_MAX_ROWS)
		return 0;
	int dev = 0, sms = 0, per_sm = 0;
	const size_t shmem = step_shmem(a, rows_nb(B));
	step_kernel k = kernel_for(B);
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
	    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shmem) !=
	            cudaSuccess ||
	    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, STEP_THREADS, shmem) !=
	            cudaSuccess ||
	    per_sm < 1) {
		cudaGetLastError();
		return 0;
	}
	return sms;
}

cudaError_t sbk_step_launch(cudaStream_t s, const sbk_step *a, int grid)
{
	sbk_step args = *a;
	void *params[] = {&args};
	return cudaLaunchCooperativeKernel((const void *)kernel_for(a->B), dim3((unsigned)grid),
	                                   dim3(STEP_THREADS), params, step_shmem(a, rows_nb(a->B)),
	                                   s);
}
