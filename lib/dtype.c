/*
 * dtype.c - conversions between float32 and the 16-bit and 8-bit weight
 * formats, for loading (model.c), quantizing and every backend's host code.
 */
#include <stdatomic.h>
#include <string.h>

#include "dtype.h"
#include "internal.h"

#define f16_to_f32 sb_f16_to_f32_inline
#define bf16_to_f32 sb_bf16_to_f32_inline

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define SB_X86 1
#endif

bool sb_have_avx2(void)
{
#ifdef SB_X86
	/* Threads may race to fill it; they all store the same value. */
	static _Atomic int cached = -1;
	if (cached < 0) {
		/* F16C through cpuid: clang 14's __builtin_cpu_supports does not
		 * know "f16c". */
		unsigned a, b, c, d;
		bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
		__builtin_cpu_init();
		cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
	}
	return cached;
#else
	return false;
#endif
}

#ifdef SB_X86
__attribute__((target("avx2,fma,f16c"))) static void widen_avx2(sb_dtype dt, const void *src,
                                                              float *dst, size_t n)
{
	size_t i = 0;
	const uint16_t *s = src;
	if (dt == SB_DTYPE_F16)
		for (; i + 8 <= n; i += 8)
			_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
	else
		for (; i + 8 <= n; i += 8)
			_mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(
				_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i))), 16)));
	for (; i < n; i++)
		dst[i] = dt == SB_DTYPE_F16 ? f16_to_f32(s[i]) : bf16_to_f32(s[i]);
}
#endif

uint16_t sb_f32_to_f16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	uint32_t sign = (u >> 16) & 0x8000, exp = (u >> 23) & 0xff, man = u & 0x7fffff;
	if (exp == 0xff) /* inf or nan */
		return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
	int e = (int)exp - 127 + 15;
	if (e >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (e <= 0) { /* subnormal or zero */
		if (e < -10)
			return (uint16_t)sign;
		man |= 0x800000;
		int shift = 14 - e;
		uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1)))
			half++;
		return (uint16_t)(sign | half);
	}
	uint32_t h = sign | (uint32_t)e << 10 | man >> 13, rem = man & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
		h++; /* may carry into the exponent, which is right */
	return (uint16_t)h;
}

uint16_t sb_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((u >> 16) | 0x40);
	return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

float sb_f16_to_f32(uint16_t h)
{
	return f16_to_f32(h);
}

void sb_widen(sb_dtype dt, const void *src, float *dst, size_t n)
{
	switch (dt) {
	case SB_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	case SB_DTYPE_F16:
	case SB_DTYPE_BF16: {
#ifdef SB_X86
		if (sb_have_avx2() && n >= 8) {
			widen_avx2(dt, src, dst, n);
			break;
		}
#endif
		const uint16_t *s = src;
		for (size_t i = 0; i < n; i++)
			dst[i] = dt == SB_DTYPE_F16 ? f16_to_f32(s[i]) : bf16_to_f32(s[i]);
		break;
	}
	default:
		memset(dst, 0, n * sizeof(float));
		break;
	}
}

/* One row of 8-bit blocks widened: q * scale of its block. */
static void q8_row(const sb_mat *W, int r, float *out)
{
	const int n = W->cols, nb = (n + SB_Q8_BLOCK - 1) / SB_Q8_BLOCK;
	const int8_t *q = (const int8_t *)W->data + (size_t)r * n;
	const uint16_t *sc = (const uint16_t *)W->scales + (size_t)r * nb;
	for (int b = 0; b < nb; b++) {
		float d = f16_to_f32(sc[b]);
		int end = (b + 1) * SB_Q8_BLOCK < n ? (b + 1) * SB_Q8_BLOCK : n;
		for (int i = b * SB_Q8_BLOCK; i < end; i++)
			out[i] = (float)q[i] * d;
	}
}

void sb_mat_row(const sb_mat *W, int r, float *out)
{
	if (W->dtype == SB_DTYPE_I8) {
		q8_row(W, r, out);
		return;
	}
	size_t esz = sb_dtype_size(W->dtype);
	sb_widen(W->dtype, (const char *)W->data + (size_t)r * (size_t)W->cols * esz, out,
	         (size_t)W->cols);
}

