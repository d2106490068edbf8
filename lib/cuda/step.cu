/*
 * step.cu - the fused decode step: a whole step of a few rows of distinct
 * states (embedding, every layer, the logits) as ONE cooperative kernel.
 *
 * At batch 1 a token is a few megabytes of weights: what bounds the
 * per-op kernels is not bandwidth but their count (87 kernels a step,
 * each a small grid waiting on its predecessor). Here every block of the
 * grid stays resident and the phases of a layer are separated by grid
 * barriers instead of kernel boundaries:
 *
 *   P1  norm (each block normalizes the B rows itself, one warp a row)
 *       and the EMA of every channel (a warp per channel) -> mx
 *   P2  hx_proj and mx_proj of every row, a warp per output row -> hxu,
 *       zgv; meanwhile every block computes the two router logits of each
 *       row itself, so that all know the decisions after the barrier
 *   P3  (only if some row is activated) the attention over each
 *       activated row's ring in chunks of SBK_CHUNK entries, a block per
 *       chunk (attn_chunk, as the per-op kernel does)
 *   P4  every block combines the chunks itself (attn_combine, og in its
 *       shared memory: no barrier for it), then h_proj and the residual,
 *       a warp per output row -> x; the ring counters advance
 *   (post-norm models normalize x after a barrier; with an FFN, fc1 and
 *   fc2 + residual are two more phases)
 *   and after the last layer the final norm and the output projection.
 *   A layer is three barriers, four where a row is activated.
 *
 * Off by default (SEQBOAT_CUDA_FUSED=1 turns it on): on the H200 its
 * first form was no faster than the per-op kernels' graph at batch 1 and
 * slower at 4 and 8; the grid barriers, not the arithmetic, bound it
 * (docs/benchmarks.md).
 *
 * The arithmetic is that of the per-op kernels (the same device
 * functions: gemv_warp, attn_chunk, attn_combine, the router), so the two
 * paths agree to float rounding of the norms' sums. Data written by one
 * block and read by another in the same kernel is read through L2
 * (__ldcg): L1 is not coherent between blocks.
 */
#include <cooperative_groups.h>

#include "device.cuh"

namespace cg = cooperative_groups;

#define STEP_THREADS 512
#define STEP_WARPS (STEP_THREADS / 32)

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

/* acc[b] = row r of W . xs[b], for W's dtype. */
template <int NB>
static __device__ __forceinline__ void dot_rows(const sbk_mat &W, int r, const float *xs, int B,
                                                float *acc)
{
	switch (W.dt) {
	case SB_DTYPE_F16:
		gemv_warp<SB_DTYPE_F16, NB>(W, r, xs, B, acc);
		break;
	case SB_DTYPE_BF16:
		gemv_warp<SB_DTYPE_BF16, NB>(W, r, xs, B, acc);
		break;
	case SB_DTYPE_I8:
		gemv_warp<SB_DTYPE_I8, NB>(W, r, xs, B, acc);
		break;
	default:
		gemv_warp<SB_DTYPE_F32, NB>(W, r, xs, B, acc);
		break;
	}
}

/* A post-norm layer's (or FFN's) rows y (B, D), complete after a barrier,
 * normalized into x (and hid): block b takes row b. */
static __device__ void post_norm(const sbk_step &a, const sbk_norm &nm, const float *y, float *xs,
                                 float *hid)
{
	const int D = a.g.D, b = blockIdx.x;
	if (b >= a.B)
		return;
	stage(xs, y + (size_t)b * D, 1, D, D);
	if (threadIdx.x < 32)
		warp_norm(nm, xs, D);
	__syncthreads();
	for (int d = threadIdx.x; d < D; d += blockDim.x) {
		a.x[(size_t)b * D + d] = xs[d];
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

template <int NB>
__global__ void __launch_bounds__(STEP_THREADS, 1) k_step(sbk_step a)
{
	cg::grid_group grid = cg::this_grid();
	/* NB rows of up to max(D, H, F) floats, then qs, kn (Z each), the
	 * chunk weights of a combine (nch) */
	extern __shared__ float xs[];
	__shared__ float sc[SBK_CHUNK];
	__shared__ int slots[SBK_CHUNK];
	__shared__ float uq[2][NB], p1s[NB];
	__shared__ unsigned live_s;
	const sbk_geo &g = a.g;
	const int D = g.D, Z = g.Z, H = g.H, F = g.F, N = g.N, ZH = Z + 2 * H, D2 = D + 2, B = a.B;
	const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
	const int gw = blockIdx.x * STEP_WARPS + w, nwarps = gridDim.x * STEP_WARPS;
	const int gt = blockIdx.x * blockDim.x + tid, nthreads = gridDim.x * blockDim.x;
	const size_t RD = (size_t)a.R * D;
	float *qs = xs + (size_t)NB * step_wide(g), *kn = qs + Z, *wk = kn + Z;

	for (int i = gt; i < B * D; i += nthreads) {
		const int b = i / D, d = i % D;
		a.x[i] = wget(a.embed.dt, a.embed.w, a.embed.sc, a.tok[b], d, D) * a.embed_scale;
	}
	grid.sync();

	for (int l = 0; l < a.L; l++) {
		const sbk_layer &ly = a.layers[l];
		const sbk_layer_vecs &v = ly.v;
		float *hid = a.hid + (size_t)l * RD;

		/* P1: norm + EMA */
		stage(xs, a.x, B, D, D);
		if (a.prenorm)
			norm_rows(ly.norm, xs, B, D);
		for (int i = gw; i < B * D; i += nwarps) {
			const int b = i / D, d = i % D;
			float *h = (float *)(a.blocks[b] + g.h) + ((size_t)l * D + d) * N;
			const float u = xs[(size_t)b * D + d];
			float s = 0.0f;
			for (int n = lane; n < N; n += 32) {
				const size_t k = (size_t)d * N + n;
				const float hv = v.q[k] * h[n] + v.pb[k] * u;
				h[n] = hv;
				s += hv * v.g[k];
			}
			s = warp_sum(s);
			if (lane == 0)
				a.mx[(size_t)b * D + d] = apply_act(g.act, s + v.omega[d] * u);
		}
		grid.sync();

		/* P2: hx_proj and mx_proj of every row (a row the router leaves
		 * out has its zgv row computed and never read: cheaper than
		 * waiting for the decision), and in every block the two router
		 * logits, so that all know the decisions */
		stage(xs, a.mx, B, D, D);
		if (w < 2) {
			float acc[NB];
			dot_rows<NB>(ly.hx, w, xs, B, acc);
			if (lane == 0)
				for (int b = 0; b < B; b++)
					uq[w][b] = acc[b] + ly.hx_b[w];
		}
		for (int r = gw; r < D + ZH; r += nwarps) {
			float acc[NB];
			if (r < D) {
				dot_rows<NB>(ly.hx, r + 2, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++)
						a.hxu[(size_t)b * D2 + r + 2] = acc[b] + ly.hx_b[r + 2];
			} else {
				const int row = r - D;
				dot_rows<NB>(ly.mx, row, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++)
						a.zgv[(size_t)b * ZH + row] = apply_act(g.act, acc[b] + ly.mx_b[row]);
			}
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

		/* P3: the attention of the activated rows, a block per chunk */
		if (live) {
			for (int item = blockIdx.x; item < B * a.nch; item += gridDim.x) {
				const int b = item / a.nch, c = item % a.nch;
				if (!((live >> b) & 1))
					continue;
				const size_t pc = (size_t)b * a.nch + c;
				__syncthreads();
				attn_chunk(a.blocks[b], g, v, l, a.pos[b], a.zgv + (size_t)b * ZH, a.inv_freq, c,
				           a.po + pc * H, a.pm + pc, a.ps + pc, qs, kn, sc, slots);
			}
			grid.sync();
			/* every block combines the chunks itself: og in shared memory */
			__syncthreads();
			for (int b = 0; b < nlive; b++) {
				if (!((live >> b) & 1))
					continue;
				const int32_t len = ((const int32_t *)(a.blocks[b] + g.ring_len))[l];
				const int after = len < g.W1 ? len + 1 : g.W1;
				attn_combine(a.pm + (size_t)b * a.nch, a.ps + (size_t)b * a.nch,
				             a.po + (size_t)b * a.nch * H, (after + SBK_CHUNK - 1) / SBK_CHUNK, H,
				             g.attn == SB_ATTN_SOFTMAX, a.zgv + (size_t)b * ZH + Z,
				             xs + (size_t)b * H, wk);
				__syncthreads();
			}
		}

		/* P4: h_proj and the residual */
		const bool post = !a.prenorm, last = !a.ffn;
		for (int r = gw; r < D; r += nwarps) {
			float acc[NB];
			dot_rows<NB>(ly.ho, r, xs, live ? nlive : 0, acc);
			if (lane == 0)
				for (int b = 0; b < B; b++) {
					const size_t i = (size_t)b * D + r;
					const float at =
						(live >> b) & 1 ? (acc[b] + ly.ho_b[r]) * p1s[b] : 0.0f;
					const float y = apply_act(
						g.act, __ldcg(a.hxu + (size_t)b * D2 + 2 + r) + at + __ldcg(a.x + i));
					if (post) {
						a.att[i] = y;
					} else {
						a.x[i] = y;
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
			post_norm(a, ly.norm, a.att, xs, last ? hid : NULL);
			grid.sync();
		}

		/* the feed-forward block */
		if (a.ffn) {
			stage(xs, a.x, B, D, D);
			if (a.prenorm)
				norm_rows(ly.ffn_norm, xs, B, D);
			for (int r = gw; r < F; r += nwarps) {
				float acc[NB];
				dot_rows<NB>(ly.fc1, r, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++)
						a.ffn_h[(size_t)b * F + r] = apply_act(g.act, acc[b] + ly.fc1_b[r]);
			}
			grid.sync();
			stage(xs, a.ffn_h, B, F, F);
			for (int r = gw; r < D; r += nwarps) {
				float acc[NB];
				dot_rows<NB>(ly.fc2, r, xs, B, acc);
				if (lane == 0)
					for (int b = 0; b < B; b++) {
						const size_t i = (size_t)b * D + r;
						const float y = __ldcg(a.x + i) + acc[b] + ly.fc2_b[r];
						if (post) {
							a.att[i] = y;
						} else {
							a.x[i] = y;
							hid[i] = y;
						}
					}
			}
			grid.sync();
			if (post) {
				post_norm(a, ly.ffn_norm, a.att, xs, hid);
				grid.sync();
			}
		}
	}

	/* the final norm and the output projection */
	stage(xs, a.x, B, D, D);
	if (a.prenorm)
		norm_rows(a.final_norm, xs, B, D);
	for (int r = gw; r < g.V; r += nwarps) {
		float acc[NB];
		dot_rows<NB>(a.out, r, xs, B, acc);
		if (lane == 0)
			for (int b = 0; b < B; b++)
				a.logits[(size_t)b * g.V + r] = acc[b];
	}
}

static size_t step_shmem(const sbk_geo *g)
{
	const int wide = step_wide(*g);
	const size_t nch = ((size_t)g->W1 + SBK_CHUNK - 1) / SBK_CHUNK;
	return ((size_t)SBK_STEP_MAX_ROWS * (size_t)wide + 2 * (size_t)g->Z + nch) * sizeof(float);
}

typedef void (*step_kernel)(sbk_step);

static step_kernel kernel_for(int B)
{
	return B <= 1 ? k_step<1> : B <= 2 ? k_step<2> : B <= 4 ? k_step<4> : k_step<8>;
}

int sbk_step_grid(const sbk_geo *g, int B)
{
	if (B < 1 || B > SBK_STEP_MAX_ROWS)
		return 0;
	int dev = 0, sms = 0, coop = 0, per_sm = 0;
	const size_t shmem = step_shmem(g);
	step_kernel k = kernel_for(B);
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop ||
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
	                                   dim3(STEP_THREADS), params, step_shmem(&a->g), s);
}
