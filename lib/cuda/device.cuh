/*
 * device.cuh - device functions shared by the CUDA engine's kernels
 * (kernels.cu: one kernel per op; step.cu: the fused decode step):
 * reductions, activations, weight loads in every dtype, the router, norms,
 * q/k, one warp's matrix-vector row and one block's chunk of decode
 * attention. Static: each .cu file gets its own copy.
 */
#ifndef SB_CUDA_DEVICE_CUH
#define SB_CUDA_DEVICE_CUH

#include <math.h>

#include "kernels.cuh"
#include "ring.h"

#define FULL 0xffffffffu

/* Programmatic dependent launch (Hopper): a kernel is scheduled while its
 * predecessor in the stream still runs, and waits here until that one's
 * results are complete; then lets its own successor be scheduled. Every
 * kernel calls it before touching memory. No-op without the launch
 * attribute or before sm_90. */
static __device__ __forceinline__ void grid_dep()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;" ::: "memory");
	asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

static __device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(FULL, v, o);
	return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
	return v;
}

/* A sum (or max) over the block; red: 33 floats of shared memory. Every
 * thread of the block must call it. */
template <bool MAX>
static __device__ float block_reduce(float v, float *red)
{
	v = MAX ? warp_max(v) : warp_sum(v);
	const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
	__syncthreads();
	if (lane == 0)
		red[w] = v;
	__syncthreads();
	if (w == 0) {
		float t = lane < nw ? red[lane] : MAX ? -INFINITY : 0.0f;
		t = MAX ? warp_max(t) : warp_sum(t);
		if (lane == 0)
			red[32] = t;
	}
	__syncthreads();
	return red[32];
}

static __device__ __forceinline__ float block_sum(float v, float *red)
{
	return block_reduce<false>(v, red);
}

static __device__ __forceinline__ float block_max(float v, float *red)
{
	return block_reduce<true>(v, red);
}

static __device__ __forceinline__ float bf16_to_f32(uint16_t h)
{
	return __uint_as_float((uint32_t)h << 16);
}

/* Element (r, c) of a weight matrix, widened to float32. */
static __device__ __forceinline__ float wget(sb_dtype dt, const void *w, const __half *sc, int r, int c,
                                      int cols)
{
	const size_t i = (size_t)r * cols + c;
	switch (dt) {
	case SB_DTYPE_F16:
		return __half2float(((const __half *)w)[i]);
	case SB_DTYPE_BF16:
		return bf16_to_f32(((const uint16_t *)w)[i]);
	case SB_DTYPE_I8:
		return (float)((const int8_t *)w)[i] *
		       __half2float(sc[(size_t)r * ((cols + 31) >> 5) + (c >> 5)]);
	default:
		return ((const float *)w)[i];
	}
}

/* The router (docs/computation.md): p1 = softmax(a0, a1)[1], activated iff
 * p1 > p0 (a tie is not). The same expressions as the CPU's. */
static __device__ __forceinline__ bool router(const float *u, float act_bias, float inv_tau, float *p1out)
{
	float a0 = (u[0] + act_bias) * inv_tau, a1 = u[1] * inv_tau;
	float mxv = a0 > a1 ? a0 : a1;
	float e0 = expf(a0 - mxv), e1 = expf(a1 - mxv);
	float p1 = e1 / (e0 + e1), p0 = e0 / (e0 + e1);
	*p1out = p1;
	return p1 > p0;
}

/* y (D) = Norm(y) in place, by the threads i0, i0 + di, .. together;
 * sum(v) adds v over those threads (and gives every one the total). */
template <typename Sum>
static __device__ __forceinline__ void norm_by(const sbk_norm &nm, float *y, int D, int i0, int di,
                                               Sum sum)
{
	if (nm.kind == SB_NORM_LAYERNORM) {
		float s = 0.0f;
		for (int i = i0; i < D; i += di)
			s += y[i];
		const float mean = sum(s) / (float)D;
		float v = 0.0f;
		for (int i = i0; i < D; i += di) {
			float d = y[i] - mean;
			v += d * d;
		}
		const float var = sum(v) / (float)D;
		const float inv = 1.0f / sqrtf(var + 1e-5f);
		for (int i = i0; i < D; i += di) {
			float t = (y[i] - mean) * inv;
			if (nm.w)
				t = t * nm.w[i] + nm.b[i];
			y[i] = t;
		}
	} else {
		float s = 0.0f;
		for (int i = i0; i < D; i += di)
			s += y[i] * y[i];
		const float ms = sum(s) / (float)D;
		const float inv = 1.0f / sqrtf(ms + 1e-5f);
		for (int i = i0; i < D; i += di) {
			float w = nm.kind == SB_NORM_SCALENORM ? nm.scalar : nm.w ? nm.w[i] : 1.0f;
			y[i] = w * y[i] * inv;
		}
	}
}

/* y (D, shared) = Norm(y), in place, by the whole block. */
static __device__ void norm_row(const sbk_norm &nm, float *y, int D, float *red)
{
	norm_by(nm, y, D, threadIdx.x, blockDim.x, [red](float v) { return block_sum(v, red); });
	__syncthreads();
}

/* y (D) = Norm(y) in place, by one warp. */
static __device__ void warp_norm(const sbk_norm &nm, float *y, int D)
{
	norm_by(nm, y, D, threadIdx.x & 31, 32, [](float v) { return warp_sum(v); });
	__syncwarp();
}

/* q = z*gq + bq, k = z*gk + bk, rotated by position p (interleaved pairs,
 * angles in double precision), by the whole block. z is read through L2
 * (it may have been written by another block of the same kernel). */
static __device__ void qk_compute(const float *z, const sbk_layer_vecs &v, int Z, bool rotary, int64_t p,
                           const double *inv_freq, float *q, float *k)
{
	const int tid = threadIdx.x, bd = blockDim.x;
	if (rotary) {
		for (int j = tid; j < Z / 2; j += bd) {
			const int a = 2 * j, b = 2 * j + 1;
			const float za = __ldcg(z + a), zb = __ldcg(z + b);
			float q0 = za * v.gq[a] + v.bq[a], q1 = zb * v.gq[b] + v.bq[b];
			float k0 = za * v.gk[a] + v.bk[a], k1 = zb * v.gk[b] + v.bk[b];
			double ang = (double)p * inv_freq[j];
			float c = (float)cos(ang), s = (float)sin(ang);
			q[a] = q0 * c - q1 * s;
			q[b] = q0 * s + q1 * c;
			k[a] = k0 * c - k1 * s;
			k[b] = k0 * s + k1 * c;
		}
	} else {
		for (int j = tid; j < Z; j += bd) {
			const float zj = __ldcg(z + j);
			q[j] = zj * v.gq[j] + v.bq[j];
			k[j] = zj * v.gk[j] + v.bk[j];
		}
	}
}

static __device__ __forceinline__ float rel_bias_at(const float *rb, int M, int64_t pk, int64_t pq)
{
	int64_t idx = (int64_t)M - 1 + pk - pq;
	if (idx < 0)
		idx = 0;
	if (idx > 2 * (int64_t)M - 2)
		idx = 2 * (int64_t)M - 2;
	return rb[idx];
}

/* fairseq's laplace with mu = 0.707107, sigma = 0.282095. */
static __device__ __forceinline__ float laplace_w(float s)
{
	const float mu = 0.707107f, inv = 1.0f / (0.282095f * sqrtf(2.0f));
	return 0.5f * (1.0f + erff((s - mu) * inv));
}

/* A score's attention weight of kind attn (sb_attn_kind): exp(s - m) for
 * softmax (m: the max it is taken against), relu(s)^2, or laplace. */
static __device__ __forceinline__ float attn_weight(int attn, float s, float m)
{
	if (attn == SB_ATTN_SOFTMAX)
		return expf(s - m);
	if (attn == SB_ATTN_RELU2)
		return s > 0.0f ? s * s : 0.0f;
	return laplace_w(s);
}


template <int DT>
static __device__ __forceinline__ float wload(const void *w, const __half *sc, size_t i, size_t si)
{
	if (DT == SB_DTYPE_F16)
		return __half2float(((const __half *)w)[i]);
	if (DT == SB_DTYPE_BF16)
		return bf16_to_f32(((const uint16_t *)w)[i]);
	if (DT == SB_DTYPE_I8)
		return (float)((const int8_t *)w)[i] * __half2float(sc[si]);
	return ((const float *)w)[i];
}

/* Eight consecutive weights (i a multiple of 8, cols a multiple of 8, so
 * the load is aligned): one 16-byte load for 16-bit weights. */
template <int DT>
static __device__ __forceinline__ void wload8(const void *w, const __half *sc, size_t i, size_t si,
                                       float *o)
{
	if (DT == SB_DTYPE_F16) {
		const uint4 u = *(const uint4 *)((const __half *)w + i);
		const __half2 *h = (const __half2 *)&u;
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const float2 f = __half22float2(h[k]);
			o[2 * k] = f.x;
			o[2 * k + 1] = f.y;
		}
	} else if (DT == SB_DTYPE_BF16) {
		const uint4 u = *(const uint4 *)((const uint16_t *)w + i);
		const uint32_t q[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
		for (int k = 0; k < 4; k++) {
			o[2 * k] = __uint_as_float(q[k] << 16);
			o[2 * k + 1] = __uint_as_float(q[k] & 0xffff0000u);
		}
	} else if (DT == SB_DTYPE_I8) {
		const uint2 u = *(const uint2 *)((const int8_t *)w + i);
		const float d = __half2float(sc[si]);
#pragma unroll
		for (int k = 0; k < 4; k++) {
			o[k] = (float)(int8_t)((u.x >> (8 * k)) & 0xffu) * d;
			o[4 + k] = (float)(int8_t)((u.y >> (8 * k)) & 0xffu) * d;
		}
	} else {
		const float4 a = *(const float4 *)((const float *)w + i),
		             b = *(const float4 *)((const float *)w + i + 4);
		o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
		o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
	}
}

#define GEMV_PASS 4

/* Bytes of one weight of dtype dt (I8: its scales apart). */
static __host__ __device__ __forceinline__ int wsize(sb_dtype dt)
{
	return dt == SB_DTYPE_F32 ? 4 : dt == SB_DTYPE_I8 ? 1 : 2;
}

/* The dot products of one weight row (row: its first weight, in global or
 * shared memory; rsc: its I8 scales) with the B (<= NB) input rows x (B,
 * cols), by one warp: lanes stride the inputs (coalesced weight reads,
 * eight weights a load where the rows allow it), every weight read once
 * for all B rows; acc[b] is the dot product with x row b (in every lane; 0
 * for b >= B). x may be in global or shared memory. */
/* t + the dot of eight weights wv with x0, x1, in column order. */
static __device__ __forceinline__ float dot8(const float *wv, float4 x0, float4 x1, float t)
{
	t = fmaf(wv[0], x0.x, t);
	t = fmaf(wv[1], x0.y, t);
	t = fmaf(wv[2], x0.z, t);
	t = fmaf(wv[3], x0.w, t);
	t = fmaf(wv[4], x1.x, t);
	t = fmaf(wv[5], x1.y, t);
	t = fmaf(wv[6], x1.z, t);
	return fmaf(wv[7], x1.w, t);
}

template <int DT, int NB>
static __device__ __forceinline__ void gemv_row(const void *row, const __half *rsc, int cols,
                                                const float *x, int B, float *acc)
{
#pragma unroll
	for (int b = 0; b < NB; b++)
		acc[b] = 0.0f;
	const int lane = threadIdx.x & 31;
	if (B > 0 && (cols & 7) == 0) {
		/* GEMV_PASS chunks of eight per lane loaded before any is used,
		 * so a warp waits for memory once per pass, not once per chunk */
		const int n8 = cols >> 3;
		for (int p0 = 0; p0 < n8; p0 += 32 * GEMV_PASS) {
			float wv[GEMV_PASS][8];
#pragma unroll
			for (int k = 0; k < GEMV_PASS; k++) {
				const int c8 = p0 + lane + 32 * k;
				if (c8 < n8)
					wload8<DT>(row, rsc, (size_t)c8 * 8, c8 >> 2, wv[k]);
			}
#pragma unroll
			for (int k = 0; k < GEMV_PASS; k++) {
				const int c8 = p0 + lane + 32 * k;
				if (c8 >= n8)
					break;
#pragma unroll
				for (int b = 0; b < NB; b++)
					if (b < B) {
						const float4 *xp =
							(const float4 *)(x + (size_t)b * cols + (size_t)c8 * 8);
						acc[b] = dot8(wv[k], xp[0], xp[1], acc[b]);
					}
			}
		}
	} else if (B > 0) {
#pragma unroll 4
		for (int c = lane; c < cols; c += 32) {
			const float wv = wload<DT>(row, rsc, c, c >> 5);
#pragma unroll
			for (int b = 0; b < NB; b++)
				if (b < B)
					acc[b] = fmaf(wv, x[(size_t)b * cols + c], acc[b]);
		}
	}
#pragma unroll
	for (int b = 0; b < NB; b++)
		acc[b] = warp_sum(acc[b]);
}

/* Output row r of W for the B (<= NB) input rows x: gemv_row of W's row r. */
template <int DT, int NB>
static __device__ __forceinline__ void gemv_warp(const sbk_mat &W, int r, const float *x, int B,
                                                 float *acc)
{
	const size_t cols = (size_t)W.cols;
	gemv_row<DT, NB>((const unsigned char *)W.w + (size_t)r * cols * wsize((sb_dtype)DT),
	                 W.sc ? W.sc + (size_t)r * ((cols + 31) >> 5) : NULL, (int)cols, x, B, acc);
}

/* Chunk c (entries c*SBK_CHUNK ..) of the decode attention of one
 * activated row, by the whole block: the row's q and new k (from z, its
 * z/gate/value row of mx_proj, position p) and the ring of layer l of
 * state blk as it is after the push. The block whose chunk holds the new
 * entry writes it into its slot (no other block reads that slot this
 * step) if it is the writer; the ring counters move later (the residual).
 * The chunk's partial result goes to po (H; only its columns h0 .. h1,
 * multiples of 4, where several blocks share a chunk) and *pm, *ps
 * (softmax: weights exp(s - the chunk's max m), their sum; otherwise the
 * weights themselves). Shared
 * memory: qs, kn (Z each), sc, slots (SBK_CHUNK each). Needs at least
 * SBK_CHUNK / ATT_EPW warps. Returns the row's chunk count; a block with c
 * past it does nothing. */
#define ATT_EPW (SBK_CHUNK / 8)
static __device__ int attn_chunk(unsigned char *blk, const sbk_geo &g, const sbk_layer_vecs &v,
                                 int l, int64_t p, const float *z, const double *inv_freq, int c,
                                 float *po, float *pm, float *ps, float *qs, float *kn, float *sc,
                                 int *slots, int h0 = 0, int h1 = -1, bool writer = true)
{
	const int Z = g.Z, H = g.H, W1 = g.W1, tid = threadIdx.x, bd = blockDim.x;
	if (h1 < 0)
		h1 = H;
	int32_t len = ((const int32_t *)(blk + g.ring_len))[l];
	int32_t head = ((const int32_t *)(blk + g.ring_head))[l];
	const int slot_new = sb_ring_push(&len, &head, W1);  // len, head: after the push
	const int nc = (len + SBK_CHUNK - 1) / SBK_CHUNK, e0 = c * SBK_CHUNK;
	if (c >= nc)
		return nc;
	const int n = len - e0 < SBK_CHUNK ? len - e0 : SBK_CHUNK;
	const bool has_new = e0 + n == len;  // local entry n-1 is the new one
	const int n_old = has_new ? n - 1 : n;
	qk_compute(z, v, Z, g.rotary, p, inv_freq, qs, kn);
	if (tid < n)
		slots[tid] = sb_ring_slot(head, e0 + tid, W1);
	__syncthreads();
	float *K = (float *)(blk + g.ring_k) + (size_t)l * W1 * Z;
	float *V = (float *)(blk + g.ring_v) + (size_t)l * W1 * H;
	int64_t *P = (int64_t *)(blk + g.ring_pos) + (size_t)l * W1;
	if (has_new && writer) {
		for (int i = tid; i < Z; i += bd)
			K[(size_t)slot_new * Z + i] = kn[i];
		for (int i = tid; i < H; i += bd)
			V[(size_t)slot_new * H + i] = __ldcg(z + Z + H + i);
		if (tid == 0)
			P[slot_new] = p;
	}
	const int w = tid >> 5, lane = tid & 31, nw = bd >> 5;
	/* Each warp's entries (SBK_CHUNK / warps of them) are read together,
	 * four floats a lane where the rows are 16-byte aligned. */
	const bool k4 = g.vec && (Z & 3) == 0 && ((uintptr_t)K & 15) == 0;
	float sacc[ATT_EPW];
#pragma unroll
	for (int j = 0; j < ATT_EPW; j++)
		sacc[j] = 0.0f;
	if (k4) {
		for (int i4 = lane; i4 < Z / 4; i4 += 32) {
			const float4 qv = ((const float4 *)qs)[i4];
			float4 kv[ATT_EPW];
#pragma unroll
			for (int j = 0; j < ATT_EPW; j++) {
				const int e = w + j * nw;
				if (e < n)
					kv[j] = has_new && e == n - 1
					        ? ((const float4 *)kn)[i4]
					        : ((const float4 *)(K + (size_t)slots[e] * Z))[i4];
			}
#pragma unroll
			for (int j = 0; j < ATT_EPW; j++)
				if (w + j * nw < n)
					sacc[j] += qv.x * kv[j].x + qv.y * kv[j].y + qv.z * kv[j].z +
					           qv.w * kv[j].w;
		}
	} else {
		for (int i = lane; i < Z; i += 32)
#pragma unroll
			for (int j = 0; j < ATT_EPW; j++) {
				const int e = w + j * nw;
				if (e < n) {
					const float *kk = has_new && e == n - 1 ? kn : K + (size_t)slots[e] * Z;
					sacc[j] += qs[i] * kk[i];
				}
			}
	}
#pragma unroll
	for (int j = 0; j < ATT_EPW; j++) {
		const int e = w + j * nw;
		float sj = warp_sum(sacc[j]);
		if (lane == 0 && e < n) {
			const bool is_new = has_new && e == n - 1;
			sj *= g.scale;
			if (v.rel_bias)
				sj += rel_bias_at(v.rel_bias, g.M, is_new ? p : P[slots[e]], p);
			sc[e] = sj;
		}
	}
	__syncthreads();
	if (w == 0) {
		const float s = lane < n ? sc[lane] : -INFINITY;
		const float m = warp_max(s);
		const float wt = lane < n ? attn_weight(g.attn, s, m) : 0.0f;
		const float sum = warp_sum(wt);
		if (lane < n)
			sc[lane] = wt;
		if (lane == 0) {
			*pm = m;
			*ps = sum;
		}
	}
	__syncthreads();
	float *out = po;
	if (g.vec && (H & 3) == 0 && ((uintptr_t)V & 15) == 0 && ((uintptr_t)z & 15) == 0 &&
	    ((uintptr_t)out & 15) == 0 && (Z & 3) == 0) {
		/* four values a thread, eight entries' loads in flight */
		for (int h4 = h0 / 4 + tid; h4 < h1 / 4; h4 += bd) {
			float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
			for (int e = 0; e < n_old; e++) {
				const float4 vv = ((const float4 *)(V + (size_t)slots[e] * H))[h4];
				const float a = sc[e];
				acc.x += a * vv.x;
				acc.y += a * vv.y;
				acc.z += a * vv.z;
				acc.w += a * vv.w;
			}
			if (has_new) {
				const float4 vv = __ldcg((const float4 *)(z + Z + H) + h4);
				const float a = sc[n - 1];
				acc.x += a * vv.x;
				acc.y += a * vv.y;
				acc.z += a * vv.z;
				acc.w += a * vv.w;
			}
			((float4 *)out)[h4] = acc;
		}
	} else {
		for (int h = h0 + tid; h < h1; h += bd) {
			float acc = 0.0f;
			for (int e = 0; e < n_old; e++)
				acc += sc[e] * V[(size_t)slots[e] * H + h];
			if (has_new)
				acc += sc[n - 1] * __ldcg(z + Z + H + h);
			out[h] = acc;
		}
	}
	return nc;
}

/* og (H) = a row's nc chunk results (pm, ps: (nc); po: (nc, H), written
 * by other blocks, so read through L2) combined, times the gate, by the
 * whole block (only columns h0 .. h1 where h1 >= 0); wk: nc floats of
 * shared memory for the chunks' weights. */
static __device__ void attn_combine(const float *pm, const float *ps, const float *po, int nc,
                                    int H, bool soft, const float *gate, float *og, float *wk,
                                    int h0 = 0, int h1 = -1)
{
	const int tid = threadIdx.x;
	if (tid < 32) {
		float gm = -INFINITY;
		for (int k = tid; k < nc; k += 32)
			gm = fmaxf(gm, __ldcg(pm + k));
		gm = warp_max(gm);
		float sum = 0.0f;
		for (int k = tid; k < nc; k += 32) {
			const float w = soft ? expf(__ldcg(pm + k) - gm) : 1.0f;
			wk[k] = w;
			sum += w * __ldcg(ps + k);
		}
		sum = warp_sum(sum);
		const float norm = soft ? 1.0f / sum : 1.0f;
		__syncwarp();
		for (int k = tid; k < nc; k += 32)
			wk[k] *= norm;
	}
	__syncthreads();
	if (h1 < 0)
		h1 = H;
	for (int h = h0 + tid; h < h1; h += blockDim.x) {
		float o = 0.0f;
#pragma unroll 8
		for (int k = 0; k < nc; k++)
			o += wk[k] * __ldcg(po + (size_t)k * H + h);
		og[h] = o * __ldcg(gate + h);
	}
}

#endif
