/*
 * gemm.cuh - matrix products of many rows on F16 tensor cores that keep
 * float32 accuracy (gemm.cu). No TF32 anywhere.
 *
 * A float32 row x is split into two F16 halves after scaling by a power
 * of two 2^-e chosen from its largest |x| (put in [2^14, 2^15): nothing
 * overflows F16 and the low halves of all but the row's tiniest entries
 * stay normal): hi = f16(x 2^-e), lo = f16(x 2^-e - hi), x = 2^e (hi + lo)
 * to about 22 bits of x's 24-bit mantissa (TF32 keeps 10). The products
 * run with F16 inputs, exact products and float32 accumulation
 * (CUBLAS_COMPUTE_32F):
 *   weight products (F16 weights, exact in F16): W x = 2^e (W hi + W lo),
 *     one product of [W | W] (rows, 2 cols) with [hi | lo];
 *   activation products: A B = Ahi Bhi + Ahi Blo + Alo Bhi (the dropped
 *     Alo Blo is 2^-22 of the whole), one product whose inner dimension is
 *     three copies of the original, the operands laid out segment by
 *     segment as [hi | lo | hi] and [hi | hi | lo].
 * The powers of two are exact: they are undone on the float32 results.
 */
#ifndef SB_CUDA_GEMM_CUH
#define SB_CUDA_GEMM_CUH

#include <cublas_v2.h>

#include "kernels.cuh"

/* Where a split writes: row i, segment k, element j at
 * h[i * ld + k * seg + j]; segment k holds the low halves where bit k of
 * lo_mask is set, else the high halves; e (rows) the row exponents. */
struct sbk_split_out {
	__half *h;
	int ld;
	size_t seg;
	int nseg;
	unsigned lo_mask;
	int *e;
};

/* The row's largest entry lands in [2^14, 2^15); exponents stay inside
 * float32's range. */
#define SBK_SPLIT_TOP 14
#define SBK_SPLIT_EMAX 125

/* The exponent e of a row whose largest |entry| is mx (0 for a zero or
 * non-finite row: NaN and Inf pass into the halves as they are). */
__device__ __forceinline__ int sbk_split_exp(float mx)
{
	if (!(mx > 0.0f && mx <= 3.4e38f))
		return 0;
	const int e = ilogbf(mx) - SBK_SPLIT_TOP;
	return e < -SBK_SPLIT_EMAX ? -SBK_SPLIT_EMAX : e > SBK_SPLIT_EMAX ? SBK_SPLIT_EMAX : e;
}

/* Row i of a split (o.h + i*o.ld) from the float32 row xr (m) of
 * exponent e, colexp as for sbk_split, by the threads of a block (xr
 * complete and visible to all of them). */
__device__ __forceinline__ void sbk_split_row(const float *xr, int m, const int *colexp, int e,
                                              __half *row, size_t seg, int nseg,
                                              unsigned lo_mask)
{
	for (int j = threadIdx.x; j < m; j += blockDim.x) {
		const float v = ldexpf(xr[j], (colexp ? colexp[j] : 0) - e);
		const __half h = __float2half_rn(v), l = __float2half_rn(v - __half2float(h));
		for (int k = 0; k < nseg; k++)
			row[k * seg + j] = (lo_mask >> k) & 1 ? l : h;
	}
}

/* A zero row i of a split. */
__device__ __forceinline__ void sbk_split_zero(int m, __half *row, size_t seg, int nseg)
{
	for (int j = threadIdx.x; j < m; j += blockDim.x)
		for (int k = 0; k < nseg; k++)
			row[k * seg + j] = __float2half_rn(0.0f);
}

/* Splits x (n, m; rows ld apart). colexp (m) or NULL: x[i][j] 2^colexp[j]
 * is split instead (exactly: a power of two). */
void sbk_split(sbk_stream st, const float *x, int n, int m, int ld, const int *colexp,
               const sbk_split_out *o);

/* y (n, m; rows ld apart) = act(y 2^e[row] + bias); e (n) or NULL (no
 * scale), bias (m) or NULL. */
void sbk_scale_bias_act(sbk_stream st, float *y, int m, int ld, int n, const int *e,
                        const float *bias, int act);

/* C (M, N, column-major, ldc) = alpha op(A) B on F16 inputs with float32
 * accumulation; A (K, M) if ta is CUBLAS_OP_T else (M, K), B (K, N), all
 * column-major. h: a handle in CUBLAS_DEFAULT_MATH (tensor cores). */
cublasStatus_t sbk_gemm_f16(cublasHandle_t h, cublasOperation_t ta, int M, int N, int K,
                            float alpha, const __half *A, int lda, const __half *B, int ldb,
                            float *C, int ldc);

#endif
