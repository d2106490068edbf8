/*
 * kernels.cu - the CUDA engine's kernels (docs/computation.md), float32
 * arithmetic throughout: weights are widened from their file dtype as
 * they are read, so the GPU computes what the CPU does up to the order of
 * float additions.
 */
#include "device.cuh"
#include "gemm.cuh"

/* ------------------------------------------------------------ kernels */

__global__ void k_embed(sbk_mat E, const int32_t *tok, float scale, float *x)
{
	grid_dep();
	const int t = blockIdx.x, D = E.cols, r = tok[t];
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		x[(size_t)t * D + d] = wget(E.dt, E.w, E.sc, r, d, D) * scale;
}

__global__ void k_norm_rows(sbk_norm nm, const float *x, float *y, int D)
{
	grid_dep();
	extern __shared__ float row[];
	__shared__ float red[33];
	const int t = blockIdx.x;
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		row[d] = x[(size_t)t * D + d];
	__syncthreads();
	norm_row(nm, row, D, red);
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		y[(size_t)t * D + d] = row[d];
}

/* The chunked EMA scan of one state's rows: grid (channel groups of 8,
 * chunks of SBK_EMA_CHUNK = 32 rows), one warp per channel d, lanes over
 * the orders (K registers each). Lane j loads the input of the chunk's
 * row j, and the steps take it by shuffle. Pass 1 (k_ema_ends) takes each
 * chunk but the last from a zero state to its end, E (chunks, D, N); the
 * chunk-0 blocks copy the state h into H0 (D, N), which pass 2 reads while
 * its last chunk writes h. Pass 2 (k_ema_out) carries H0 through the
 * earlier chunks' ends, h <- q^32 h + E[k], then scans its own rows with
 * their outputs. The CPU scans the rows one after the other: the sums
 * differ in rounding only. */
#if SBK_EMA_CHUNK != 32
#error "the EMA scan takes a chunk's rows one a lane"
#endif
template <int K>
__global__ void k_ema_ends(const float *h, sbk_layer_vecs v, const float *xn, float *E, float *H0,
                           int T, int D, int N)
{
	grid_dep();
	const int d = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
	const int c = blockIdx.y;
	if (d >= D)
		return;
	if (c == 0)
#pragma unroll
		for (int k = 0; k < K; k++) {
			const int n = lane + 32 * k;
			if (n < N)
				H0[(size_t)d * N + n] = h[(size_t)d * N + n];
		}
	if (c == (int)gridDim.y - 1)
		return;
	float hk[K], qk[K], pk[K];
#pragma unroll
	for (int k = 0; k < K; k++) {
		const int n = lane + 32 * k;
		const size_t i = (size_t)d * N + n;
		hk[k] = qk[k] = pk[k] = 0.0f;
		if (n < N) {
			qk[k] = v.q[i];
			pk[k] = v.pb[i];
		}
	}
	/* not the last chunk: all 32 rows are there */
	const int t0 = c * 32;
	const float ul = xn[(size_t)(t0 + lane) * D + d];
#pragma unroll
	for (int j = 0; j < 32; j++) {
		const float u = __shfl_sync(FULL, ul, j);
#pragma unroll
		for (int k = 0; k < K; k++)
			hk[k] = qk[k] * hk[k] + pk[k] * u;
	}
#pragma unroll
	for (int k = 0; k < K; k++) {
		const int n = lane + 32 * k;
		if (n < N)
			E[((size_t)c * D + d) * N + n] = hk[k];
	}
}

template <int K>
__global__ void k_ema_out(float *h, const float *H0, const float *E, sbk_layer_vecs v,
                          const float *xn, float *mx, int T, int D, int N, int act)
{
	grid_dep();
	const int d = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
	const int c = blockIdx.y, t0 = c * 32;
	if (d >= D)
		return;
	const float ul = t0 + lane < T ? xn[(size_t)(t0 + lane) * D + d] : 0.0f;
	float hk[K], qk[K], pk[K], gk[K];
#pragma unroll
	for (int k = 0; k < K; k++) {
		const int n = lane + 32 * k;
		const size_t i = (size_t)d * N + n;
		hk[k] = qk[k] = pk[k] = gk[k] = 0.0f;
		if (n < N) {
			hk[k] = H0[i];
			qk[k] = v.q[i];
			pk[k] = v.pb[i];
			gk[k] = v.g[i];
		}
	}
	/* the carry, eight earlier ends loaded at a time */
#pragma unroll
	for (int k = 0; k < K; k++) {
		const int n = lane + 32 * k;
		if (n >= N)
			continue;
		float qL = qk[k];
#pragma unroll
		for (int s = 0; s < 5; s++)
			qL *= qL;
		for (int j0 = 0; j0 < c; j0 += 8) {
			float ev[8];
#pragma unroll
			for (int jj = 0; jj < 8; jj++)
				ev[jj] = j0 + jj < c ? E[((size_t)(j0 + jj) * D + d) * N + n] : 0.0f;
#pragma unroll
			for (int jj = 0; jj < 8; jj++)
				if (j0 + jj < c)
					hk[k] = qL * hk[k] + ev[jj];
		}
	}
	const int nt = T - t0 < 32 ? T - t0 : 32;
	float s[32];
#pragma unroll
	for (int j = 0; j < 32; j++) {
		const float u = __shfl_sync(FULL, ul, j);
		s[j] = 0.0f;
		if (j < nt)
#pragma unroll
			for (int k = 0; k < K; k++) {
				hk[k] = qk[k] * hk[k] + pk[k] * u;
				s[j] += hk[k] * gk[k];
			}
	}
	/* The 32 sums over the lanes in 31 shuffles: at each halving a lane
	 * keeps the half of the pairs its bit o picks and takes the partner's
	 * share of them; lane j ends with step j's sum in s[0]. */
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		const bool up = (lane & o) != 0;
#pragma unroll
		for (int i = 0; i < o; i++) {
			const float send = up ? s[i] : s[i + o], keep = up ? s[i + o] : s[i];
			s[i] = keep + __shfl_xor_sync(FULL, send, o);
		}
	}
	if (lane < nt)
		mx[(size_t)(t0 + lane) * D + d] = apply_act(act, s[0] + v.omega[d] * ul);
	if (c == (int)gridDim.y - 1)
#pragma unroll
		for (int k = 0; k < K; k++) {
			const int n = lane + 32 * k;
			if (n < N)
				h[(size_t)d * N + n] = hk[k];
		}
}

/* Rows of distinct states: grid (channel groups of 32, B). Each block
 * norms its row (cheap, redundant across the row's blocks), then its
 * warps update their channels. */
__global__ void k_norm_ema_rows(unsigned char *const *blocks, sbk_geo g, int l, bool prenorm,
                                sbk_norm nm, sbk_layer_vecs v, const float *x, float *mx)
{
	grid_dep();
	extern __shared__ float row[];
	__shared__ float red[33];
	const int b = blockIdx.y, D = g.D, N = g.N;
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		row[d] = x[(size_t)b * D + d];
	__syncthreads();
	if (prenorm)
		norm_row(nm, row, D, red);
	float *h = (float *)(blocks[b] + g.h) + (size_t)l * D * N;
	const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
	const int d0 = blockIdx.x * 32, d1 = d0 + 32 < D ? d0 + 32 : D;
	for (int d = d0 + w; d < d1; d += nw) {
		const float u = row[d];
		float s = 0.0f;
		for (int n = lane; n < N; n += 32) {
			const size_t i = (size_t)d * N + n;
			float hv = v.q[i] * h[i] + v.pb[i] * u;
			h[i] = hv;
			s += hv * v.g[i];
		}
		s = warp_sum(s);
		if (lane == 0)
			mx[(size_t)b * D + d] = apply_act(g.act, s + v.omega[d] * u);
	}
}


/* One warp per output; lanes stride the inputs (coalesced weight reads,
 * eight weights a load where the rows allow it), every weight read once
 * for all B rows. */
template <int DT, int NB>
__global__ void k_gemv(sbk_mat W, const float *x, int B, const float *bias, int act, float *y,
                       const float *rhxu, int rld, float act_bias, float inv_tau, const int *arow)
{
	grid_dep();
	const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
	if (r >= W.rows)
		return;
	unsigned live = 0;
	for (int b = 0; b < B; b++) {
		bool on = true;
		if (arow) {
			on = arow[b] >= 0;
		} else if (rhxu) {
			float p;
			on = router(rhxu + (size_t)b * rld, act_bias, inv_tau, &p);
		}
		if (on)
			live |= 1u << b;
	}
	float acc[NB];
	gemv_warp<DT, NB>(W, r, x, live ? B : 0, acc);
	if (lane == 0) {
		const float bi = bias ? bias[r] : 0.0f;
#pragma unroll
		for (int b = 0; b < NB; b++)
			if (b < B)
				y[(size_t)b * W.rows + r] = (live >> b) & 1 ? apply_act(act, acc[b] + bi) : 0.0f;
	}
}

/* One block for all T rows: decisions, then a prefix count over them
 * (ballots per warp, warp totals in shared memory). */
__global__ void k_router_block(const float *hxu, int T, int D2, float act_bias, float inv_tau,
                               float *pr1, int *arow, int *aidx, int *nact, uint64_t *snact,
                               uint8_t *act_out)
{
	grid_dep();
	__shared__ int wsum[32];
	__shared__ int base;
	const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = blockDim.x >> 5;
	if (tid == 0)
		base = 0;
	__syncthreads();
	for (int t0 = 0; t0 < T; t0 += blockDim.x) {
		const int t = t0 + tid;
		bool a = false;
		if (t < T) {
			float p;
			a = router(hxu + (size_t)t * D2, act_bias, inv_tau, &p);
			pr1[t] = p;
			if (act_out)
				act_out[t] = a;
		}
		const unsigned m = __ballot_sync(FULL, a);
		const int before = __popc(m & ((1u << lane) - 1u));
		if (lane == 0)
			wsum[w] = __popc(m);
		__syncthreads();
		int off = 0, total = 0;
		for (int i = 0; i < nw; i++) {
			if (i < w)
				off += wsum[i];
			total += wsum[i];
		}
		if (t < T) {
			const int idx = base + off + before;
			arow[t] = a ? idx : -1;
			if (a)
				aidx[idx] = t;
		}
		__syncthreads();
		if (tid == 0)
			base += total;
		__syncthreads();
	}
	if (tid == 0) {
		*nact = base;
		*snact += (uint64_t)base;
	}
}

/* The halves of span row j of K and V (gemm.cuh), from float32 rows k, v
 * complete and visible to the block (NULL: a zero row). */
__device__ void span_halves(const sbk_attn_halves &ah, int j, const float *k, const float *v,
                            int Z, int H, float *red)
{
	__half *kr = ah.kh + (size_t)j * 3 * Z, *vr = ah.vh + (size_t)j * H;
	const size_t vseg = (size_t)ah.cols * H;
	if (!k) {
		sbk_split_zero(Z, kr, Z, 3);
		sbk_split_zero(H, vr, vseg, 3);
		if (threadIdx.x == 0)
			ah.ke[j] = ah.ve[j] = 0;
		return;
	}
	float mk = 0.0f, mv = 0.0f;
	for (int i = threadIdx.x; i < Z; i += blockDim.x)
		mk = fmaxf(mk, fabsf(k[i]));
	for (int i = threadIdx.x; i < H; i += blockDim.x)
		mv = fmaxf(mv, fabsf(v[i]));
	const int ek = sbk_split_exp(block_max(mk, red)), ev = sbk_split_exp(block_max(mv, red));
	sbk_split_row(k, Z, NULL, ek, kr, Z, 3, 4u);
	sbk_split_row(v, H, NULL, ev, vr, vseg, 3, 4u);
	if (threadIdx.x == 0) {
		ah.ke[j] = ek;
		ah.ve[j] = ev;
	}
}

__global__ void k_ring_span(const unsigned char *block, sbk_geo g, int l, sbk_attn_halves ah,
                            int64_t *cpos)
{
	grid_dep();
	__shared__ float red[33];
	const int j = blockIdx.x, Z = g.Z, H = g.H, W1 = g.W1;
	const int R = ((const int32_t *)(block + g.ring_len))[l];
	const int head = ((const int32_t *)(block + g.ring_head))[l];
	const int e = R - g.W + j;
	if (e >= 0) {
		const int slot = sb_ring_slot(head, e, W1);
		const float *k = (const float *)(block + g.ring_k) + ((size_t)l * W1 + slot) * Z;
		const float *v = (const float *)(block + g.ring_v) + ((size_t)l * W1 + slot) * H;
		span_halves(ah, j, k, v, Z, H, red);
		if (threadIdx.x == 0)
			cpos[j] = ((const int64_t *)(block + g.ring_pos))[(size_t)l * W1 + slot];
	} else {
		span_halves(ah, j, NULL, NULL, Z, H, red);
		if (threadIdx.x == 0)
			cpos[j] = 0;
	}
}

__global__ void k_qk_block(sbk_geo g, sbk_layer_vecs v, const float *zgv, const int *aidx,
                           const int *nact, const int64_t *pos, const double *inv_freq, float *Q,
                           float *CK, float *CV, int64_t *cpos, sbk_attn_halves ah)
{
	grid_dep();
	__shared__ float red[33];
	const int i = blockIdx.x, Z = g.Z, H = g.H, W = g.W, ZH = Z + 2 * H;
	float *q = Q + (size_t)i * Z, *k = CK + (size_t)(W + i) * Z, *vv = CV + (size_t)(W + i) * H;
	__half *qr = ah.qh + (size_t)i * 3 * Z;
	if (i >= *nact) {
		for (int j = threadIdx.x; j < Z; j += blockDim.x)
			q[j] = k[j] = 0.0f;
		for (int j = threadIdx.x; j < H; j += blockDim.x)
			vv[j] = 0.0f;
		sbk_split_zero(Z, qr, Z, 3);
		span_halves(ah, W + i, NULL, NULL, Z, H, red);
		if (threadIdx.x == 0) {
			cpos[W + i] = 0;
			ah.qe[i] = 0;
		}
		return;
	}
	const int t = aidx[i];
	const float *z = zgv + (size_t)t * ZH;
	qk_compute(z, v, Z, g.rotary, pos[t], inv_freq, q, k);
	for (int j = threadIdx.x; j < H; j += blockDim.x)
		vv[j] = z[Z + H + j];
	if (threadIdx.x == 0)
		cpos[W + i] = pos[t];
	__syncthreads();
	float mq = 0.0f;
	for (int j = threadIdx.x; j < Z; j += blockDim.x)
		mq = fmaxf(mq, fabsf(q[j]));
	const int eq = sbk_split_exp(block_max(mq, red));
	sbk_split_row(q, Z, NULL, eq, qr, Z, 3, 2u);
	if (threadIdx.x == 0)
		ah.qe[i] = eq;
	span_halves(ah, W + i, k, vv, Z, H, red);
}

/* Row i (the i-th activated row) attends span entries i .. W+i, less
 * those before the ring's start (W - R). */
__global__ void k_attn_weights_block(sbk_geo g, const float *rel, float *S, int T,
                                     const int *nact, const int32_t *ring_len_l,
                                     const int64_t *cpos, sbk_attn_halves ah)
{
	grid_dep();
	__shared__ float red[33];
	const int i = blockIdx.x, W = g.W, cols = W + T, tid = threadIdx.x, bd = blockDim.x;
	float *row = S + (size_t)i * cols;
	__half *hr = ah.sh + (size_t)i * 3 * cols;
	if (i >= *nact) {
		for (int j = tid; j < cols; j += bd)
			row[j] = 0.0f;
		sbk_split_zero(cols, hr, cols, 3);
		if (tid == 0)
			ah.se[i] = 0;
		return;
	}
	const int R = *ring_len_l;
	const int lo = i > W - R ? i : W - R, hi = W + i;
	const int64_t pq = cpos[W + i];
	float mxs = -INFINITY;
	const int qe = ah.qe[i];
	for (int j = lo + tid; j <= hi; j += bd) {
		float s = ldexpf(row[j], qe + ah.ke[j]);
		if (rel)
			s += rel_bias_at(rel, g.M, cpos[j], pq);
		row[j] = s;
		mxs = fmaxf(mxs, s);
	}
	if (g.attn == SB_ATTN_SOFTMAX) {
		mxs = block_max(mxs, red);
		float sum = 0.0f;
		for (int j = lo + tid; j <= hi; j += bd) {
			float a = expf(row[j] - mxs);
			row[j] = a;
			sum += a;
		}
		sum = block_sum(sum, red);
		for (int j = lo + tid; j <= hi; j += bd)
			row[j] = row[j] / sum;
	} else {
		for (int j = lo + tid; j <= hi; j += bd) {
			row[j] = attn_weight(g.attn, row[j], 0.0f);
		}
	}
	for (int j = tid; j < lo; j += bd)
		row[j] = 0.0f;
	for (int j = hi + 1 + tid; j < cols; j += bd)
		row[j] = 0.0f;
	/* the halves of row times 2^ve[j] (gemm.cuh) */
	__syncthreads();
	float m = 0.0f;
	for (int j = lo + tid; j <= hi; j += bd)
		m = fmaxf(m, fabsf(ldexpf(row[j], ah.ve[j])));
	const int e = sbk_split_exp(block_max(m, red));
	sbk_split_row(row, cols, ah.ve, e, hr, cols, 3, 2u);
	if (tid == 0)
		ah.se[i] = e;
}

__global__ void k_gate_block(sbk_geo g, float *og, const float *zgv, const int *aidx,
                             const int *nact, const int *se, __half *xh, int *xe)
{
	grid_dep();
	__shared__ float red[33];
	const int i = blockIdx.x, Z = g.Z, H = g.H, ZH = Z + 2 * H;
	float *row = og + (size_t)i * H;
	if (i >= *nact) {
		if (xh) {
			sbk_split_zero(H, xh + (size_t)i * 2 * H, H, 2);
			if (threadIdx.x == 0)
				xe[i] = 0;
		}
		return;
	}
	const float *gate = zgv + (size_t)aidx[i] * ZH + Z;
	const int e = se[i];
	float m = 0.0f;
	for (int j = threadIdx.x; j < H; j += blockDim.x) {
		const float o = ldexpf(row[j], e) * gate[j];
		row[j] = o;
		m = fmaxf(m, fabsf(o));
	}
	if (!xh)
		return;
	__syncthreads();
	const int ex = sbk_split_exp(block_max(m, red));
	sbk_split_row(row, H, NULL, ex, xh + (size_t)i * 2 * H, H, 2, 2u);
	if (threadIdx.x == 0)
		xe[i] = ex;
}

/* New entry i is pushed after the R already held: it lands in slot
 * (head + R + i) mod W1, and only the last W1 survive. */
__global__ void k_ring_push_block(unsigned char *block, sbk_geo g, int l, const float *CK,
                                  const float *CV, const int64_t *cpos, const int *nact)
{
	grid_dep();
	const int i = blockIdx.x, n = *nact, W1 = g.W1, Z = g.Z, H = g.H, W = g.W;
	if (i >= n || i < n - W1)
		return;
	const int R = ((const int32_t *)(block + g.ring_len))[l];
	const int head = ((const int32_t *)(block + g.ring_head))[l];
	const int slot = (int)(((long long)head + R + i) % W1);
	float *k = (float *)(block + g.ring_k) + ((size_t)l * W1 + slot) * Z;
	float *v = (float *)(block + g.ring_v) + ((size_t)l * W1 + slot) * H;
	const float *ck = CK + (size_t)(W + i) * Z, *cv = CV + (size_t)(W + i) * H;
	if (g.vec && (Z & 3) == 0 && (H & 3) == 0 && (((uintptr_t)k | (uintptr_t)v | (uintptr_t)ck |
	                                               (uintptr_t)cv) & 15) == 0) {
		for (int j = threadIdx.x; j < Z / 4; j += blockDim.x)
			((float4 *)k)[j] = ((const float4 *)ck)[j];
		for (int j = threadIdx.x; j < H / 4; j += blockDim.x)
			((float4 *)v)[j] = ((const float4 *)cv)[j];
	} else {
		for (int j = threadIdx.x; j < Z; j += blockDim.x)
			k[j] = ck[j];
		for (int j = threadIdx.x; j < H; j += blockDim.x)
			v[j] = cv[j];
	}
	if (threadIdx.x == 0)
		((int64_t *)(block + g.ring_pos))[(size_t)l * W1 + slot] = cpos[W + i];
}

__global__ void k_ring_count(unsigned char *block, sbk_geo g, int l, const int *nact)
{
	grid_dep();
	int32_t *len = (int32_t *)(block + g.ring_len) + l, *head = (int32_t *)(block + g.ring_head) + l;
	const long long total = (long long)*len + *nact, W1 = g.W1;
	const long long drop = total > W1 ? total - W1 : 0;
	*head = (int32_t)((*head + drop) % W1);
	*len = (int32_t)(total < W1 ? total : W1);
}

/* Rows of distinct states, grid (chunks of SBK_CHUNK ring entries, B).
 * Every block of an activated row runs its chunk (attn_chunk); the last
 * block of the row to finish combines the partial results, times the
 * gate, into og. A row the router leaves out only records its decision. */
__global__ void k_attn_rows(unsigned char *const *blocks, sbk_geo g, sbk_layer_vecs v, int l,
                            const int64_t *pos, const float *hxu, float act_bias,
                            const float *zgv, const double *inv_freq, float *pr1, int *arow,
                            uint8_t *act_out, float *po, float *pm, float *ps, int *count,
                            float *og, int nch)
{
	grid_dep();
	extern __shared__ float sh[];
	__shared__ float sc[SBK_CHUNK];
	__shared__ int slots[SBK_CHUNK];
	__shared__ int last;
	const int b = blockIdx.y, c = blockIdx.x, Z = g.Z, H = g.H, ZH = Z + 2 * H;
	const int tid = threadIdx.x;
	float p;
	const bool a = router(hxu + (size_t)b * (g.D + 2), act_bias, v.inv_tau, &p);
	if (c == 0 && tid == 0) {
		pr1[b] = p;
		arow[b] = a ? b : -1;
		if (act_out)
			act_out[b] = a;
	}
	if (!a)
		return;
	const float *z = zgv + (size_t)b * ZH;
	const size_t pc = (size_t)b * nch + c;
	const int nc = attn_chunk(blocks[b], g, v, l, pos[b], z, inv_freq, c, po + pc * H, pm + pc,
	                          ps + pc, sh, sh + Z, sc, slots);
	if (c >= nc)
		return;
	__threadfence();
	__syncthreads();
	if (tid == 0)
		last = atomicAdd(&count[b], 1) == nc - 1;
	__syncthreads();
	if (!last)
		return;
	__threadfence();
	attn_combine(pm + (size_t)b * nch, ps + (size_t)b * nch, po + (size_t)b * nch * H, nc, H,
	             g.attn == SB_ATTN_SOFTMAX, z + Z, og + (size_t)b * H, sh + 2 * Z);
	if (tid == 0)
		count[b] = 0;
}

__global__ void k_residual(float *x, const float *hxu, int D2, const float *att, const int *arow,
                           const float *pr1, int D, int act, bool ffn, sbk_norm post,
                           bool has_post, float *hid, unsigned char *const *ring_blocks,
                           sbk_geo g, int l)
{
	grid_dep();
	extern __shared__ float row[];
	__shared__ float red[33];
	const int t = blockIdx.x;
	/* A decode row's ring counters move here, once every block that read
	 * them (k_attn_rows) is done. */
	if (ring_blocks && threadIdx.x == 0 && arow[t] >= 0) {
		unsigned char *blk = ring_blocks[t];
		int32_t *len = (int32_t *)(blk + g.ring_len) + l, *head = (int32_t *)(blk + g.ring_head) + l;
		int32_t ln = *len, hd = *head;
		sb_ring_push(&ln, &hd, g.W1);
		*len = ln;
		*head = hd;
		((uint64_t *)(blk + g.n_act))[l]++;
	}
	float *xi = x + (size_t)t * D;
	if (ffn) {
		for (int d = threadIdx.x; d < D; d += blockDim.x)
			row[d] = xi[d] + att[(size_t)t * D + d];
	} else {
		const int a = arow[t];
		const float p = pr1[t];
		const float *hx = hxu + (size_t)t * D2 + 2;
		for (int d = threadIdx.x; d < D; d += blockDim.x) {
			const float at = a >= 0 ? att[(size_t)a * D + d] * p : 0.0f;
			row[d] = apply_act(act, hx[d] + at + xi[d]);
		}
	}
	__syncthreads();
	if (has_post)
		norm_row(post, row, D, red);
	for (int d = threadIdx.x; d < D; d += blockDim.x) {
		xi[d] = row[d];
		if (hid)
			hid[(size_t)t * D + d] = row[d];
	}
}

__global__ void k_widen(sbk_mat W, float *w32)
{
	grid_dep();
	const size_t total = (size_t)W.rows * W.cols;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		const int r = (int)(i / W.cols), c = (int)(i % W.cols);
		w32[i] = wget(W.dt, W.w, W.sc, r, c, W.cols);
	}
}

/* ------------------------------------------------------------ launches */

/* Launches kernel k with the programmatic-serialization attribute where
 * the stream allows it (st.pdl: a Hopper GPU). */
template <typename... KArgs, typename... Args>
static void launch(sbk_stream st, dim3 grid, dim3 block, size_t shmem, void (*k)(KArgs...),
                   Args... args)
{
	cudaLaunchConfig_t cfg = {};
	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = shmem;
	cfg.stream = st.s;
	cudaLaunchAttribute attr[1];
	attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	attr[0].val.programmaticStreamSerializationAllowed = 1;
	cfg.attrs = attr;
	cfg.numAttrs = st.pdl ? 1 : 0;
	cudaLaunchKernelEx(&cfg, k, args...);
}

static unsigned grid_for(size_t n, unsigned threads)
{
	size_t b = (n + threads - 1) / threads;
	return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

void sbk_embed(sbk_stream st, const sbk_mat *E, const int32_t *tok, int T, float scale, float *x)
{
	launch(st, T, 256, 0, k_embed, *E, tok, scale, x);
}

void sbk_norm_rows(sbk_stream st, const sbk_norm *nm, const float *x, float *y, int T, int D)
{
	launch(st, T, 256, (size_t)D * sizeof(float), k_norm_rows, *nm, x, y, D);
}

template <int K>
static void ema_scan_k(sbk_stream st, float *h, const sbk_layer_vecs *v, const float *xn,
                       float *mx, int T, int D, int N, int act, float *scratch)
{
	const unsigned chunks = (unsigned)((T + SBK_EMA_CHUNK - 1) / SBK_EMA_CHUNK);
	const dim3 grid((unsigned)((D + 7) / 8), chunks);
	if (chunks <= 1) {
		/* one chunk: each warp reads its channel of h before it writes it */
		launch(st, grid, 256, 0, k_ema_out<K>, h, (const float *)h, (const float *)scratch, *v, xn,
		       mx, T, D, N, act);
		return;
	}
	float *H0 = scratch, *E = scratch + (size_t)D * N;
	launch(st, grid, 256, 0, k_ema_ends<K>, (const float *)h, *v, xn, E, H0, T, D, N);
	launch(st, grid, 256, 0, k_ema_out<K>, h, (const float *)H0, (const float *)E, *v, xn, mx, T,
	       D, N, act);
}

void sbk_ema_scan(sbk_stream st, float *h, const sbk_layer_vecs *v, const float *xn, float *mx,
                  int T, int D, int N, int act, float *scratch)
{
	if (N <= 32)
		ema_scan_k<1>(st, h, v, xn, mx, T, D, N, act, scratch);
	else if (N <= 64)
		ema_scan_k<2>(st, h, v, xn, mx, T, D, N, act, scratch);
	else if (N <= 128)
		ema_scan_k<4>(st, h, v, xn, mx, T, D, N, act, scratch);
	else
		ema_scan_k<8>(st, h, v, xn, mx, T, D, N, act, scratch);
}

void sbk_norm_ema_rows(sbk_stream st, unsigned char *const *blocks, const sbk_geo *g, int l,
                       bool prenorm, const sbk_norm *nm, const sbk_layer_vecs *v, const float *x,
                       float *mx, int B)
{
	dim3 grid((unsigned)((g->D + 31) / 32), (unsigned)B);
	launch(st, grid, 256, (size_t)g->D * sizeof(float), k_norm_ema_rows, blocks, *g, l, prenorm, *nm,
	                                                                 *v, x, mx);
}

template <int DT>
static void gemv_dt(sbk_stream st, const sbk_mat *W, const float *x, int B, const float *bias,
                    int act, float *y, const float *rhxu, int rld, float ab, float it,
                    const int *arow)
{
	const unsigned blocks = (unsigned)((W->rows + 7) / 8);
	if (B <= 1)
		launch(st, blocks, 256, 0, k_gemv<DT, 1>, *W, x, B, bias, act, y, rhxu, rld, ab, it, arow);
	else if (B <= 2)
		launch(st, blocks, 256, 0, k_gemv<DT, 2>, *W, x, B, bias, act, y, rhxu, rld, ab, it, arow);
	else if (B <= 4)
		launch(st, blocks, 256, 0, k_gemv<DT, 4>, *W, x, B, bias, act, y, rhxu, rld, ab, it, arow);
	else
		launch(st, blocks, 256, 0, k_gemv<DT, 8>, *W, x, B, bias, act, y, rhxu, rld, ab, it, arow);
}

void sbk_gemv(sbk_stream st, const sbk_mat *W, const float *x, int B, const float *bias, int act,
              float *y, const float *rhxu, int rld, float act_bias, float inv_tau,
              const int *arow)
{
	switch (W->dt) {
	case SB_DTYPE_F16:
		gemv_dt<SB_DTYPE_F16>(st, W, x, B, bias, act, y, rhxu, rld, act_bias, inv_tau, arow);
		break;
	case SB_DTYPE_BF16:
		gemv_dt<SB_DTYPE_BF16>(st, W, x, B, bias, act, y, rhxu, rld, act_bias, inv_tau, arow);
		break;
	case SB_DTYPE_I8:
		gemv_dt<SB_DTYPE_I8>(st, W, x, B, bias, act, y, rhxu, rld, act_bias, inv_tau, arow);
		break;
	default:
		gemv_dt<SB_DTYPE_F32>(st, W, x, B, bias, act, y, rhxu, rld, act_bias, inv_tau, arow);
		break;
	}
}

void sbk_router_block(sbk_stream st, const float *hxu, int T, int D2, float act_bias,
                      float inv_tau, float *pr1, int *arow, int *aidx, int *nact,
                      uint64_t *state_nact_l, uint8_t *act_out)
{
	launch(st, 1, 1024, 0, k_router_block, hxu, T, D2, act_bias, inv_tau, pr1, arow, aidx, nact,
	                                   state_nact_l, act_out);
}

void sbk_ring_span(sbk_stream st, const unsigned char *block, const sbk_geo *g, int l,
                   const sbk_attn_halves *ah, int64_t *cpos)
{
	launch(st, g->W, 128, 0, k_ring_span, block, *g, l, *ah, cpos);
}

void sbk_qk_block(sbk_stream st, const sbk_geo *g, const sbk_layer_vecs *v, const float *zgv,
                  const int *aidx, const int *nact, const int64_t *pos, const double *inv_freq,
                  int T, float *Q, float *CK, float *CV, int64_t *cpos,
                  const sbk_attn_halves *ah)
{
	launch(st, T, 256, 0, k_qk_block, *g, *v, zgv, aidx, nact, pos, inv_freq, Q, CK, CV, cpos,
	       *ah);
}

void sbk_attn_weights_block(sbk_stream st, const sbk_geo *g, const sbk_layer_vecs *v, float *S,
                            int T, const int *nact, const int32_t *ring_len_l,
                            const int64_t *cpos, const sbk_attn_halves *ah)
{
	launch(st, T, 256, 0, k_attn_weights_block, *g, v->rel_bias, S, T, nact, ring_len_l, cpos,
	       *ah);
}

void sbk_gate_block(sbk_stream st, const sbk_geo *g, float *og, const float *zgv,
                    const int *aidx, const int *nact, int T, const int *se, __half *xh, int *xe)
{
	launch(st, T, 256, 0, k_gate_block, *g, og, zgv, aidx, nact, se, xh, xe);
}

void sbk_ring_push_block(sbk_stream st, unsigned char *block, const sbk_geo *g, int l,
                         const float *CK, const float *CV, const int64_t *cpos,
                         const int *nact, int T)
{
	launch(st, T, 128, 0, k_ring_push_block, block, *g, l, CK, CV, cpos, nact);
	launch(st, 1, 1, 0, k_ring_count, block, *g, l, nact);
}

void sbk_attn_rows(sbk_stream st, unsigned char *const *blocks, const sbk_geo *g,
                   const sbk_layer_vecs *v, int l, const int64_t *pos, const float *hxu,
                   float act_bias, const float *zgv, const double *inv_freq, float *pr1,
                   int *arow, uint8_t *act_out, float *po, float *pm, float *ps, int *count,
                   float *og, int B)
{
	const int nch = (g->W1 + SBK_CHUNK - 1) / SBK_CHUNK;
	launch(st, dim3((unsigned)nch, (unsigned)B), 256, (2 * (size_t)g->Z + nch) * sizeof(float), k_attn_rows,
		blocks, *g, *v, l, pos, hxu, act_bias, zgv, inv_freq, pr1, arow, act_out, po, pm, ps,
		count, og, nch);
}

void sbk_residual(sbk_stream st, float *x, const float *hxu, int D2, const float *att,
                  const int *arow, const float *pr1, int T, int D, int act, bool ffn,
                  const sbk_norm *post, float *hid, unsigned char *const *ring_blocks,
                  const sbk_geo *g, int l)
{
	sbk_norm none = {0, NULL, NULL, 1.0f};
	launch(st, T, 256, (size_t)D * sizeof(float), k_residual, x, hxu, D2, att, arow, pr1, D, act, ffn,
	                                                      post ? *post : none, post != NULL, hid,
	                                                      ring_blocks, *g, l);
}

void sbk_widen(sbk_stream st, const sbk_mat *W, float *w32)
{
	launch(st, grid_for((size_t)W->rows * W->cols, 256), 256, 0, k_widen, *W, w32);
}
