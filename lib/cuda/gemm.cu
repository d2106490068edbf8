/*
 * gemm.cu - split F16 tensor-core products of float32 accuracy
 * (gemm.cuh): the kernels that split float32 rows into scaled F16 halves
 * and undo the scale, and the cuBLAS call. Launched plainly (no early
 * launch): these run only in blocks with cuBLAS products.
 */
#include "device.cuh"
#include "gemm.cuh"

__device__ __forceinline__ void split_one(float v, __half *hi, __half *lo)
{
	*hi = __float2half_rn(v);
	*lo = __float2half_rn(v - __half2float(*hi));
}

/* One block a row: its largest |x 2^colexp|, the exponent, the halves. */
__global__ void k_split(const float *x, int m, int ld, const int *colexp, sbk_split_out o,
                        bool pairs)
{
	__shared__ float red[33];
	const int i = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
	const float *xr = x + (size_t)i * ld;
	float mx = 0.0f;
	for (int j = tid; j < m; j += bd) {
		const float v = colexp ? ldexpf(xr[j], colexp[j]) : xr[j];
		mx = fmaxf(mx, fabsf(v));
	}
	const int e = sbk_split_exp(block_max(mx, red));
	if (tid == 0)
		o.e[i] = e;
	__half *row = o.h + (size_t)i * o.ld;
	if (pairs) {
		for (int j = 2 * tid; j < m; j += 2 * bd) {
			const float2 v = *(const float2 *)(xr + j);
			__half h0, l0, h1, l1;
			split_one(ldexpf(v.x, (colexp ? colexp[j] : 0) - e), &h0, &l0);
			split_one(ldexpf(v.y, (colexp ? colexp[j + 1] : 0) - e), &h1, &l1);
			const __half2 hh = __halves2half2(h0, h1), ll = __halves2half2(l0, l1);
			for (int k = 0; k < o.nseg; k++)
				*(__half2 *)(row + k * o.seg + j) = (o.lo_mask >> k) & 1 ? ll : hh;
		}
	} else {
		sbk_split_row(xr, m, colexp, e, row, o.seg, o.nseg, o.lo_mask);
	}
}

/* One thread an element: every load in flight at once. */
__global__ void k_scale_bias_act(float *y, int m, int ld, int n, const int *e, const float *bias,
                                 int act)
{
	const size_t total = (size_t)n * m;
	for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
	     idx += (size_t)gridDim.x * blockDim.x) {
		const int i = (int)(idx / (size_t)m), j = (int)(idx % (size_t)m);
		float *p = y + (size_t)i * ld + j;
		/* 2^e[i] exactly: |e| <= SBK_SPLIT_EMAX */
		float v = e ? *p * __int_as_float((127 + e[i]) << 23) : *p;
		if (bias)
			v += bias[j];
		*p = apply_act(act, v);
	}
}

void sbk_split(sbk_stream st, const float *x, int n, int m, int ld, const int *colexp,
               const sbk_split_out *o)
{
	if (n < 1)
		return;
	const bool pairs = (m & 1) == 0 && (ld & 1) == 0 && (o->ld & 1) == 0 && (o->seg & 1) == 0 &&
	                   ((uintptr_t)x & 7) == 0 && ((uintptr_t)o->h & 3) == 0;
	k_split<<<n, 256, 0, st.s>>>(x, m, ld, colexp, *o, pairs);
}

void sbk_scale_bias_act(sbk_stream st, float *y, int m, int ld, int n, const int *e,
                        const float *bias, int act)
{
	const size_t total = (size_t)n * m;
	if (total == 0)
		return;
	size_t blocks = (total + 255) / 256;
	blocks = blocks > 65535 ? 65535 : blocks;
	k_scale_bias_act<<<(unsigned)blocks, 256, 0, st.s>>>(y, m, ld, n, e, bias, act);
}

cublasStatus_t sbk_gemm_f16(cublasHandle_t h, cublasOperation_t ta, int M, int N, int K,
                            float alpha, const __half *A, int lda, const __half *B, int ldb,
                            float *C, int ldc)
{
	const float zero = 0.0f;
	return cublasGemmEx(h, ta, CUBLAS_OP_N, M, N, K, &alpha, A, CUDA_R_16F, lda, B, CUDA_R_16F,
	                    ldb, &zero, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
