/*
 * ops.c - kernels on float32 arrays: matrix products over F32/F16/BF16
 * weights (OpenBLAS for the float32 work), norms, activations, rotary.
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "internal.h"

static inline float bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline float f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
	if (exp == 0) {
		if (man == 0) {
			u = sign;
		} else { /* subnormal: renormalize */
			exp = 127 - 15 + 1;
			while (!(man & 0x400)) {
				man <<= 1;
				exp--;
			}
			u = sign | exp << 23 | (man & 0x3ff) << 13;
		}
	} else if (exp == 31) {
		u = sign | 0x7f800000u | man << 13;
	} else {
		u = sign | (exp + 127 - 15) << 23 | man << 13;
	}
	float f;
	memcpy(&f, &u, 4);
	return f;
}

void sb_widen(sb_dtype dt, const void *src, float *dst, size_t n)
{
	switch (dt) {
	case SB_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	case SB_DTYPE_F16: {
		const uint16_t *s = src;
		for (size_t i = 0; i < n; i++)
			dst[i] = f16_to_f32(s[i]);
		break;
	}
	case SB_DTYPE_BF16: {
		const uint16_t *s = src;
		for (size_t i = 0; i < n; i++)
			dst[i] = bf16_to_f32(s[i]);
		break;
	}
	default:
		memset(dst, 0, n * sizeof(float));
		break;
	}
}

void sb_mat_row(const sb_mat *W, int r, float *out)
{
	size_t esz = sb_dtype_size(W->dtype);
	sb_widen(W->dtype, (const char *)W->data + (size_t)r * (size_t)W->cols * esz, out,
	         (size_t)W->cols);
}

/* Rows of a 16-bit matrix widened per block, so that the float32 product
 * runs at BLAS speed without a float32 copy of the whole model. */
#define WIDEN_ROWS 64

size_t sb_matmul_ws_floats(int max_cols)
{
	return (size_t)WIDEN_ROWS * (size_t)max_cols;
}

void sb_matmul(float *Y, const float *X, int T, const sb_mat *W, const float *bias,
               float *ws)
{
	const int NO = W->rows, NI = W->cols;
	if (W->dtype == SB_DTYPE_F32) {
		if (T == 1)
			cblas_sgemv(CblasRowMajor, CblasNoTrans, NO, NI, 1.0f, W->data, NI, X, 1,
			            0.0f, Y, 1);
		else
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, NO, NI, 1.0f, X, NI,
			            W->data, NI, 0.0f, Y, NO);
	} else if (T == 1) {
		/* One token: widen each row on the fly and dot it, reading
		 * every weight once. */
		const uint16_t *w = W->data;
		for (int o = 0; o < NO; o++) {
			const uint16_t *row = w + (size_t)o * NI;
			float acc = 0.0f;
			if (W->dtype == SB_DTYPE_BF16)
				for (int i = 0; i < NI; i++)
					acc += bf16_to_f32(row[i]) * X[i];
			else
				for (int i = 0; i < NI; i++)
					acc += f16_to_f32(row[i]) * X[i];
			Y[o] = acc;
		}
	} else {
		for (int o0 = 0; o0 < NO; o0 += WIDEN_ROWS) {
			int n = NO - o0 < WIDEN_ROWS ? NO - o0 : WIDEN_ROWS;
			for (int r = 0; r < n; r++)
				sb_mat_row(W, o0 + r, ws + (size_t)r * NI);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, NI, 1.0f, X, NI,
			            ws, NI, 0.0f, Y + o0, NO);
		}
	}
	if (bias)
		for (int t = 0; t < T; t++)
			for (int o = 0; o < NO; o++)
				Y[(size_t)t * NO + o] += bias[o];
}

#define NORM_EPS 1e-5f

void sb_norm_apply(const sb_norm *nm, float *y, const float *x, int D)
{
	switch (nm->kind) {
	case SB_NORM_LAYERNORM: {
		float mean = 0.0f, var = 0.0f;
		for (int i = 0; i < D; i++)
			mean += x[i];
		mean /= (float)D;
		for (int i = 0; i < D; i++) {
			float d = x[i] - mean;
			var += d * d;
		}
		var /= (float)D;
		float inv = 1.0f / sqrtf(var + NORM_EPS);
		for (int i = 0; i < D; i++) {
			float v = (x[i] - mean) * inv;
			if (nm->weight)
				v = v * nm->weight[i] + nm->bias[i];
			y[i] = v;
		}
		break;
	}
	case SB_NORM_SCALENORM:
	case SB_NORM_RMSNORM: {
		float ms = 0.0f;
		for (int i = 0; i < D; i++)
			ms += x[i] * x[i];
		ms /= (float)D;
		float inv = 1.0f / sqrtf(ms + NORM_EPS);
		for (int i = 0; i < D; i++) {
			float w = nm->kind == SB_NORM_SCALENORM ? nm->scalar
			          : nm->weight                 ? nm->weight[i]
			                                       : 1.0f;
			y[i] = w * x[i] * inv;
		}
		break;
	}
	}
}

float sb_silu(float x)
{
	return x / (1.0f + expf(-x));
}

void sb_activate(sb_act_kind k, float *x, size_t n)
{
	switch (k) {
	case SB_ACT_SILU:
		for (size_t i = 0; i < n; i++)
			x[i] = sb_silu(x[i]);
		break;
	case SB_ACT_GELU: /* the exact (erf) form, as torch's default gelu */
		for (size_t i = 0; i < n; i++)
			x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
		break;
	case SB_ACT_RELU:
		for (size_t i = 0; i < n; i++)
			x[i] = x[i] > 0.0f ? x[i] : 0.0f;
		break;
	}
}

void sb_rotary(float *x, int Z, int64_t pos, const double *inv_freq)
{
	for (int i = 0; i < Z / 2; i++) {
		/* Double precision: positions pass 2^24 in long generations. */
		double ang = (double)pos * inv_freq[i];
		float c = (float)cos(ang), s = (float)sin(ang);
		float x0 = x[2 * i], x1 = x[2 * i + 1];
		x[2 * i] = x0 * c - x1 * s;
		x[2 * i + 1] = x0 * s + x1 * c;
	}
}
