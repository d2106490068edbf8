/*
 * ops.c - the CPU backend's kernels on float32 arrays: matrix products
 * over F32/F16/BF16/q8 weights (OpenBLAS for the float32 work), norms,
 * activations, rotary, the EMA and attention over the ring.
 */
#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "dtype.h"
#include "pool.h"

#define bf16_to_f32 sb_bf16_to_f32_inline
#define f16_to_f32 sb_f16_to_f32_inline

/* ---- x86 kernels (AVX2 + FMA + F16C), chosen at run time ---- */

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define SB_X86 1

static bool have_avx2(void) { return sb_have_avx2(); }

__attribute__((target("avx2,fma,f16c"))) static inline __m256 load8(sb_dtype dt, const void *p)
{
	switch (dt) {
	case SB_DTYPE_F16:
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
	case SB_DTYPE_BF16:
		return _mm256_castsi256_ps(_mm256_slli_epi32(
			_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
	default:
		return _mm256_loadu_ps((const float *)p);
	}
}

__attribute__((target("avx2,fma,f16c"))) static inline float hsum8(__m256 v)
{
	__m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
	lo = _mm_add_ps(lo, hi);
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
	return _mm_cvtss_f32(lo);
}

/* y[r] = W[r] . x for rows r0..r1-1, each weight read once. One copy per
 * dtype so that the load is a constant inside the loop. */
#define ROWS_AVX2(NAME, DT)                                                          \
	__attribute__((target("avx2,fma,f16c"))) static void NAME(                   \
		const sb_mat *W, int r0, int r1, const float *x, float *y)           \
	{                                                                            \
		const int n = W->cols;                                               \
		const size_t esz = sb_dtype_size(DT);                                \
		for (int r = r0; r < r1; r++) {                                      \
			const char *w = (const char *)W->data + (size_t)r * n * esz; \
			__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();   \
			int i = 0;                                                   \
			for (; i + 16 <= n; i += 16) {                               \
				a0 = _mm256_fmadd_ps(load8(DT, w + i * esz),          \
				                     _mm256_loadu_ps(x + i), a0);      \
				a1 = _mm256_fmadd_ps(load8(DT, w + (i + 8) * esz),    \
				                     _mm256_loadu_ps(x + i + 8), a1);  \
			}                                                            \
			for (; i + 8 <= n; i += 8)                                   \
				a0 = _mm256_fmadd_ps(load8(DT, w + i * esz),          \
				                     _mm256_loadu_ps(x + i), a0);      \
			float acc = hsum8(_mm256_add_ps(a0, a1));                    \
			if (i < n) {                                                 \
				float tail[8];                                       \
				sb_widen(DT, w + i * esz, tail, (size_t)(n - i));    \
				for (int j = 0; j < n - i; j++)                      \
					acc += tail[j] * x[i + j];                   \
			}                                                            \
			y[r] = acc;                                                  \
		}                                                                    \
	}

ROWS_AVX2(rows_avx2_f32, SB_DTYPE_F32)
ROWS_AVX2(rows_avx2_f16, SB_DTYPE_F16)
ROWS_AVX2(rows_avx2_bf16, SB_DTYPE_BF16)

/* 8-bit blocks: per block of 32, the sum of q*x in float, times the
 * block's scale. */
__attribute__((target("avx2,fma,f16c"))) static void rows_avx2_q8(const sb_mat *W, int r0, int r1,
                                                                const float *x, float *y)
{
	const int n = W->cols, nb = (n + SB_Q8_BLOCK - 1) / SB_Q8_BLOCK, full = n / SB_Q8_BLOCK;
	for (int r = r0; r < r1; r++) {
		const int8_t *q = (const int8_t *)W->data + (size_t)r * n;
		const uint16_t *sc = (const uint16_t *)W->scales + (size_t)r * nb;
		__m256 acc = _mm256_setzero_ps();
		for (int b = 0; b < full; b++) {
			const int8_t *qb = q + b * SB_Q8_BLOCK;
			const float *xb = x + b * SB_Q8_BLOCK;
			__m256 part = _mm256_setzero_ps();
			for (int k = 0; k < SB_Q8_BLOCK; k += 8) {
				__m256 w = _mm256_cvtepi32_ps(
					_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qb + k))));
				part = _mm256_fmadd_ps(w, _mm256_loadu_ps(xb + k), part);
			}
			acc = _mm256_fmadd_ps(part, _mm256_set1_ps(f16_to_f32(sc[b])), acc);
		}
		float total = hsum8(acc);
		if (full < nb) {
			float part = 0.0f;
			for (int i = full * SB_Q8_BLOCK; i < n; i++)
				part += (float)q[i] * x[i];
			total += part * f16_to_f32(sc[full]);
		}
		y[r] = total;
	}
}

/* An AVX-512 kernel for q8 decode, chosen at run time where the CPU has
 * AVX-512F: the int8-to-float conversion is what bounds q8, and 16 lanes
 * halve it. (The 16-bit and F32 kernels measured slower at 512 bits on
 * the development machine, so they stay AVX2.) */
static bool have_avx512(void)
{
	static _Atomic int cached = -1;
	if (cached < 0) {
		/* SEQBOAT_CPU_AVX512=0 keeps the AVX2 kernels (the tests run the
		 * engine suite both ways on a machine that has AVX-512). */
		const char *env = getenv("SEQBOAT_CPU_AVX512");
		__builtin_cpu_init();
		cached = have_avx2() && __builtin_cpu_supports("avx512f") && !(env && !strcmp(env, "0"));
	}
	return cached;
}

__attribute__((target("avx512f"))) static inline __m512 load16_i8(const int8_t *p)
{
	return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* q8: blocks of 32 int8 weights, two 16-wide converts per block. */
__attribute__((target("avx512f"))) static void rows_avx512_q8(const sb_mat *W, int r0, int r1,
                                                            const float *x, float *y)
{
	const int n = W->cols, nb = (n + SB_Q8_BLOCK - 1) / SB_Q8_BLOCK, full = n / SB_Q8_BLOCK;
	for (int r = r0; r < r1; r++) {
		const int8_t *q = (const int8_t *)W->data + (size_t)r * n;
		const uint16_t *sc = (const uint16_t *)W->scales + (size_t)r * nb;
		__m512 acc = _mm512_setzero_ps();
		for (int b = 0; b < full; b++) {
			const int8_t *qb = q + b * SB_Q8_BLOCK;
			const float *xb = x + b * SB_Q8_BLOCK;
			__m512 part = _mm512_mul_ps(load16_i8(qb), _mm512_loadu_ps(xb));
			part = _mm512_fmadd_ps(load16_i8(qb + 16), _mm512_loadu_ps(xb + 16), part);
			acc = _mm512_fmadd_ps(part, _mm512_set1_ps(f16_to_f32(sc[b])), acc);
		}
		float total = _mm512_reduce_add_ps(acc);
		if (full < nb) {
			float part = 0.0f;
			for (int i = full * SB_Q8_BLOCK; i < n; i++)
				part += (float)q[i] * x[i];
			total += part * f16_to_f32(sc[full]);
		}
		y[r] = total;
	}
}

static void rows_avx2(const sb_mat *W, int r0, int r1, const float *x, float *y)
{
	if (W->dtype == SB_DTYPE_I8 && have_avx512()) {
		rows_avx512_q8(W, r0, r1, x, y);
		return;
	}
	switch (W->dtype) {
	case SB_DTYPE_I8: rows_avx2_q8(W, r0, r1, x, y); break;
	case SB_DTYPE_F16: rows_avx2_f16(W, r0, r1, x, y); break;
	case SB_DTYPE_BF16: rows_avx2_bf16(W, r0, r1, x, y); break;
	default: rows_avx2_f32(W, r0, r1, x, y); break;
	}
}

/* Several rows of X against several rows of W at once, each output summed
 * exactly as ROWS_AVX2 sums a row (two 8-lane accumulators over steps of
 * 16 columns, hsum8 of their sum, then the tail in order): a batch of
 * decoded rows gets, bit for bit, the numbers of one row at a time, while
 * each weight is read (and widened, in registers) once per RX rows of X
 * instead of once per row. Y[t * ys + r] for RW rows of W from w (row
 * stride wst bytes) and RX rows of X from x (row stride xs floats). */
#define EXACT_BLOCK(NAME, DT, RW, RX)                                                       \
	__attribute__((target("avx2,fma,f16c"))) static void NAME(                          \
		const char *w, size_t wst, const float *x, size_t xs, int n, float *y, size_t ys) \
	{                                                                                   \
		const size_t esz = sb_dtype_size(DT);                                       \
		__m256 a0[RW][RX], a1[RW][RX];                                              \
		for (int i = 0; i < RW; i++)                                                \
			for (int j = 0; j < RX; j++)                                        \
				a0[i][j] = a1[i][j] = _mm256_setzero_ps();                  \
		int k = 0;                                                                  \
		for (; k + 16 <= n; k += 16)                                                \
			for (int i = 0; i < RW; i++) {                                      \
				__m256 wl = load8(DT, w + i * wst + k * esz);               \
				__m256 wh = load8(DT, w + i * wst + (k + 8) * esz);         \
				for (int j = 0; j < RX; j++) {                              \
					a0[i][j] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(x + j * xs + k), \
					                           a0[i][j]);                  \
					a1[i][j] = _mm256_fmadd_ps(wh,                          \
					                           _mm256_loadu_ps(x + j * xs + k + 8), \
					                           a1[i][j]);                  \
				}                                                           \
			}                                                                   \
		for (; k + 8 <= n; k += 8)                                                  \
			for (int i = 0; i < RW; i++) {                                      \
				__m256 wl = load8(DT, w + i * wst + k * esz);               \
				for (int j = 0; j < RX; j++)                                \
					a0[i][j] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(x + j * xs + k), \
					                           a0[i][j]);                  \
			}                                                                   \
		for (int i = 0; i < RW; i++) {                                              \
			float tail[8];                                                      \
			if (k < n)                                                          \
				sb_widen(DT, w + i * wst + k * esz, tail, (size_t)(n - k)); \
			for (int j = 0; j < RX; j++) {                                      \
				float acc = hsum8(_mm256_add_ps(a0[i][j], a1[i][j]));       \
				for (int q = 0; q < n - k; q++)                             \
					acc += tail[q] * x[j * xs + k + q];                 \
				y[j * ys + i] = acc;                                        \
			}                                                                   \
		}                                                                           \
	}

#define EXACT_BLOCKS(SUF, DT)                                                           \
	EXACT_BLOCK(exact_##SUF##_1, DT, 1, 1)                                          \
	EXACT_BLOCK(exact_##SUF##_2, DT, 1, 2)                                          \
	EXACT_BLOCK(exact_##SUF##_3, DT, 1, 3)                                          \
	EXACT_BLOCK(exact_##SUF##_4, DT, 1, 4)                                          \
	EXACT_BLOCK(exact_##SUF##_5, DT, 1, 5)                                          \
	EXACT_BLOCK(exact_##SUF##_6, DT, 1, 6)                                          \
	static const exact_fn exact_##SUF[EXACT_RX] = {                                 \
		exact_##SUF##_1, exact_##SUF##_2, exact_##SUF##_3,                      \
		exact_##SUF##_4, exact_##SUF##_5, exact_##SUF##_6,                      \
	};

/* Rows of X per pass of one weight row: 12 accumulators, and the widening
 * of each 16 weights paid once for 6 rows. */
#define EXACT_RX 6

typedef void (*exact_fn)(const char *w, size_t wst, const float *x, size_t xs, int n, float *y,
                         size_t ys);
EXACT_BLOCKS(f32, SB_DTYPE_F32)
EXACT_BLOCKS(f16, SB_DTYPE_F16)
EXACT_BLOCKS(bf16, SB_DTYPE_BF16)

/* Weight rows per pass over the rows of X: their widened values stay in
 * the L1/L2 while every row of X goes by. */
#define EXACT_CHUNK 128

/* Y (T, W.rows) for W rows r0..r1-1, T >= 1, numbers as rows_avx2's. */
static void exact_rows(const sb_mat *W, int r0, int r1, const float *X, int T, float *Y)
{
	const exact_fn *fn = W->dtype == SB_DTYPE_F16    ? exact_f16
	                     : W->dtype == SB_DTYPE_BF16 ? exact_bf16
	                                                 : exact_f32;
	const int n = W->cols, NO = W->rows;
	const size_t wst = (size_t)n * sb_dtype_size(W->dtype);
	for (int c0 = r0; c0 < r1; c0 += EXACT_CHUNK) {
		const int c1 = c0 + EXACT_CHUNK < r1 ? c0 + EXACT_CHUNK : r1;
		for (int t = 0; t < T; t += EXACT_RX) {
			const int rx = T - t < EXACT_RX ? T - t : EXACT_RX;
			for (int r = c0; r < c1; r++)
				fn[rx - 1]((const char *)W->data + (size_t)r * wst, wst, X + (size_t)t * n,
				           (size_t)n, n, Y + (size_t)t * NO + r, (size_t)NO);
		}
	}
}

/* The upper (h = 1) or lower half of a 512-bit register. */
__attribute__((target("avx2,fma,f16c,avx512f"))) static inline __m256 half8(__m512 v, int h)
{
	return h ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))
	         : _mm512_castps512_ps256(v);
}

/* The same sums at 512 bits: one register holds 16
 * consecutive columns of a product, lanes 0-7 being the AVX2 kernel's
 * first accumulator and lanes 8-15 its second (columns k..k+7 and
 * k+8..k+15 of each step of 16), so a plain 16-wide FMA of 16 weights and
 * 16 values of a row of X advances both, lane by lane, exactly as the two
 * 8-wide FMAs do. A step of 8 updates lanes 0-7 alone (a mask), and the
 * halves are added and reduced as hsum8 reduces them (reduce4x4, 16
 * products at a time). RW rows of W against RX rows of X: RW x RX
 * accumulators, each widened weight used RX times and each load of X RW
 * times, and no packing of X (the rows are read where they are). The
 * bias b of the RW rows (or NULL) is added to each finished sum, as a
 * separate pass over Y would add it. */
__attribute__((target("avx2,fma,f16c,avx512f"))) static inline __m512 load16(sb_dtype dt,
                                                                            const void *p)
{
	switch (dt) {
	case SB_DTYPE_F16:
		return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
	case SB_DTYPE_BF16:
		return _mm512_castsi512_ps(_mm512_slli_epi32(
			_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
	default:
		return _mm512_loadu_ps((const float *)p);
	}
}

/* The reduction of 16 products at once, each exactly as hsum8(lo + hi)
 * reduces one: v[i][j] (w row i, x row j) holds 16 lanes; first lo + hi
 * (8 lanes: a0 + a1), then lanes l + l+4, then (0 + 2) + (1 + 3), by
 * shuffles that put the halves of four products side by side. Row j of
 * the result, lane i, is the sum of v[i][j]: stored at y[j * ys + i] for
 * i < rw, j < rx. */
__attribute__((target("avx2,fma,f16c,avx512f"), always_inline)) static inline void
reduce4x4(__m512 v00, __m512 v01, __m512 v02, __m512 v03, __m512 v10, __m512 v11, __m512 v12,
          __m512 v13, __m512 v20, __m512 v21, __m512 v22, __m512 v23, __m512 v30, __m512 v31,
          __m512 v32, __m512 v33, float *y, size_t ys, int rw, int rx, const float *b)
{
#define LO_HI(A, B) _mm512_add_ps(_mm512_shuffle_f32x4(A, B, 0x44), _mm512_shuffle_f32x4(A, B, 0xee))
#define HALVES(S, U) _mm512_add_ps(_mm512_shuffle_f32x4(S, U, 0x88), _mm512_shuffle_f32x4(S, U, 0xdd))
#define PAIRS(A, B) _mm512_add_ps(_mm512_shuffle_ps(A, B, _MM_SHUFFLE(1, 0, 1, 0)),  \
                                  _mm512_shuffle_ps(A, B, _MM_SHUFFLE(3, 2, 3, 2)))
#define LAST(A, B) _mm512_add_ps(_mm512_shuffle_ps(A, B, _MM_SHUFFLE(2, 0, 2, 0)),   \
                                 _mm512_shuffle_ps(A, B, _MM_SHUFFLE(3, 1, 3, 1)))
	__m512 t0 = HALVES(LO_HI(v00, v01), LO_HI(v02, v03));
	__m512 t1 = HALVES(LO_HI(v10, v11), LO_HI(v12, v13));
	__m512 t2 = HALVES(LO_HI(v20, v21), LO_HI(v22, v23));
	__m512 t3 = HALVES(LO_HI(v30, v31), LO_HI(v32, v33));
	__m512 r = LAST(PAIRS(t0, t1), PAIRS(t2, t3));
#undef LO_HI
#undef HALVES
#undef PAIRS
#undef LAST
	if (rw == 4) {
		if (b) /* the bias, after the sum (as a separate pass adds it) */
			r = _mm512_add_ps(r, _mm512_broadcast_f32x4(_mm_loadu_ps(b)));
		_mm_storeu_ps(y, _mm512_castps512_ps128(r));
		if (rx > 1)
			_mm_storeu_ps(y + ys, _mm512_extractf32x4_ps(r, 1));
		if (rx > 2)
			_mm_storeu_ps(y + 2 * ys, _mm512_extractf32x4_ps(r, 2));
		if (rx > 3)
			_mm_storeu_ps(y + 3 * ys, _mm512_extractf32x4_ps(r, 3));
	} else {
		float out[16];
		_mm512_storeu_ps(out, r);
		for (int j = 0; j < rx; j++)
			for (int i = 0; i < rw; i++)
				y[j * ys + i] = b ? out[4 * j + i] + b[i] : out[4 * j + i];
	}
}

typedef void (*exact16_fn)(const char *w, size_t wst, const float *x, size_t xs, int n,
                           float *y, size_t ys, const float *b);

#define EXACT16_BLOCK(NAME, DT, RW, RX)                                                      \
	__attribute__((target("avx2,fma,f16c,avx512f"))) static void NAME(                   \
		const char *w, size_t wst, const float *x, size_t xs, int n, float *y, size_t ys, \
		const float *b)                                                              \
	{                                                                                    \
		const size_t esz = DT == SB_DTYPE_F32 ? 4 : 2;                               \
		/* 4 x a multiple of 4, the unused ones staying zero */                  \
		__m512 a[4][(RX + 3) / 4 * 4];                                               \
		for (int i = 0; i < 4; i++)                                                  \
			for (int j = 0; j < (RX + 3) / 4 * 4; j++)                           \
				a[i][j] = _mm512_setzero_ps();                               \
		int k = 0;                                                                   \
		for (; k + 16 <= n; k += 16) {                                               \
			__m512 wv[RW];                                                       \
			for (int i = 0; i < RW; i++)                                         \
				wv[i] = load16(DT, w + i * wst + k * esz);                   \
			for (int j = 0; j < RX; j++) {                                       \
				__m512 xv = _mm512_loadu_ps(x + j * xs + k);                 \
				for (int i = 0; i < RW; i++)                                 \
					a[i][j] = _mm512_fmadd_ps(wv[i], xv, a[i][j]);       \
			}                                                                    \
		}                                                                            \
		if (k + 8 <= n) {                                                            \
			__m512 wv[RW];                                                       \
			for (int i = 0; i < RW; i++)                                         \
				wv[i] = _mm512_castps256_ps512(load8(DT, w + i * wst + k * esz)); \
			for (int j = 0; j < RX; j++) {                                       \
				__m512 xv = _mm512_maskz_loadu_ps(0xff, x + j * xs + k);     \
				for (int i = 0; i < RW; i++)                                 \
					a[i][j] = _mm512_mask3_fmadd_ps(wv[i], xv, a[i][j], 0xff); \
			}                                                                    \
			k += 8;                                                              \
		}                                                                            \
		for (int j0 = 0; j0 < RX; j0 += 4)                                           \
			reduce4x4(a[0][j0], a[0][j0 + 1], a[0][j0 + 2], a[0][j0 + 3],        \
			          a[1][j0], a[1][j0 + 1], a[1][j0 + 2], a[1][j0 + 3],        \
			          a[2][j0], a[2][j0 + 1], a[2][j0 + 2], a[2][j0 + 3],        \
			          a[3][j0], a[3][j0 + 1], a[3][j0 + 2], a[3][j0 + 3],        \
			          y + j0 * ys, ys, RW, RX - j0 < 4 ? RX - j0 : 4,            \
			          k < n ? NULL : b);                                         \
		if (k < n)                                                                   \
			for (int i = 0; i < RW; i++) {                                       \
				float tail[8];                                               \
				sb_widen(DT, w + i * wst + k * esz, tail, (size_t)(n - k));  \
				for (int j = 0; j < RX; j++) {                               \
					float acc = y[j * ys + i];                           \
					for (int q = 0; q < n - k; q++)                      \
						acc += tail[q] * x[j * xs + k + q];          \
					y[j * ys + i] = b ? acc + b[i] : acc;                \
				}                                                            \
			}                                                                    \
	}

/* Rows of W and of X per call of the kernels below. */
#define E16_RW 4
#define E16_RX 4

#define EXACT16_BLOCKS(SUF, DT)                                                          \
	EXACT16_BLOCK(e16_##SUF##_4_1, DT, E16_RW, 1)                                    \
	EXACT16_BLOCK(e16_##SUF##_4_2, DT, E16_RW, 2)                                    \
	EXACT16_BLOCK(e16_##SUF##_4_3, DT, E16_RW, 3)                                    \
	EXACT16_BLOCK(e16_##SUF##_4_4, DT, E16_RW, 4)                                    \
	EXACT16_BLOCK(e16_##SUF##_1_1, DT, 1, 1)                                         \
	EXACT16_BLOCK(e16_##SUF##_1_2, DT, 1, 2)                                         \
	EXACT16_BLOCK(e16_##SUF##_1_3, DT, 1, 3)                                         \
	EXACT16_BLOCK(e16_##SUF##_1_4, DT, 1, 4)                                         \
	static const exact16_fn e16_##SUF[2][E16_RX] = {                                   \
		{e16_##SUF##_1_1, e16_##SUF##_1_2, e16_##SUF##_1_3, e16_##SUF##_1_4},    \
		{e16_##SUF##_4_1, e16_##SUF##_4_2, e16_##SUF##_4_3, e16_##SUF##_4_4},    \
	};

EXACT16_BLOCKS(f32, SB_DTYPE_F32)
EXACT16_BLOCKS(f16, SB_DTYPE_F16)
EXACT16_BLOCKS(bf16, SB_DTYPE_BF16)

/* Y (T, W.rows) for W rows r0..r1-1: for each chunk of weight rows (in
 * the L2), each block of E16_RX rows of X (in the L1) against every
 * E16_RW weight rows of the chunk in turn. Rows pf0..pf1-1 (those likely
 * to come next) are prefetched during the last chunk. */
static void exact16_rows(const sb_mat *W, int r0, int r1, const float *X, int T,
                         const float *bias, float *Y, int pf0, int pf1)
{
	const exact16_fn(*fn)[E16_RX] = W->dtype == SB_DTYPE_F16    ? e16_f16
	                              : W->dtype == SB_DTYPE_BF16 ? e16_bf16
	                                                          : e16_f32;
	const int n = W->cols, NO = W->rows;
	const size_t wst = (size_t)n * sb_dtype_size(W->dtype);
	const int nb = (T + E16_RX - 1) / E16_RX;
	for (int c0 = r0; c0 < r1; c0 += EXACT_CHUNK) {
		const int c1 = c0 + EXACT_CHUNK < r1 ? c0 + EXACT_CHUNK : r1;
		/* the next chunk's weights, a share per block of X: they come
		 * from memory (a step's other work evicts them), this chunk's
		 * from the L2 */
		int n0 = c1, n1 = c1 + EXACT_CHUNK < r1 ? c1 + EXACT_CHUNK : r1;
		if (n0 >= n1) {
			n0 = pf0;
			n1 = pf1;
		}
		const char *next = (const char *)W->data + (size_t)n0 * wst;
		const size_t next_bytes = n1 > n0 ? (size_t)(n1 - n0) * wst : 0;
		/* a few lines per call of the kernel, spread over the chunk (a
		 * burst of them waits for the fill buffers) */
		const size_t calls = (size_t)nb * (size_t)((c1 - c0 + E16_RW - 1) / E16_RW);
		const size_t per_call = ((next_bytes + 63) / 64 + calls - 1) / calls * 64;
		size_t o = 0;
		for (int t = 0; t < T; t += E16_RX) {
			const int rx = T - t < E16_RX ? T - t : E16_RX;
			const float *xt = X + (size_t)t * n;
			float *yt = Y + (size_t)t * NO;
			int r = c0;
			for (; r + E16_RW <= c1; r += E16_RW) {
				for (size_t e = o + per_call; o < e && o < next_bytes; o += 64)
					__builtin_prefetch(next + o, 0, 2);
				fn[1][rx - 1]((const char *)W->data + (size_t)r * wst, wst, xt, (size_t)n,
				              n, yt + r, (size_t)NO, bias ? bias + r : NULL);
			}
			for (; r < c1; r++)
				fn[0][rx - 1]((const char *)W->data + (size_t)r * wst, wst, xt, (size_t)n,
				              n, yt + r, (size_t)NO, bias ? bias + r : NULL);
		}
	}
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float a, const float *x, int n)
{
	__m256 va = _mm256_set1_ps(a);
	int i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}
/* exp(x) for 8 floats: range reduction by ln 2 (split in two constants)
 * and a degree-6 polynomial on [-ln2/2, ln2/2]; relative error about 2e-7,
 * far inside the 1e-4 the logits are held to. */
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x)
{
	const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447505531f);
	x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
	                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
	__m256 p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	__m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) static void silu_avx2(float *x, size_t n)
{
	size_t i = 0;
	const __m256 one = _mm256_set1_ps(1.0f);
	for (; i + 8 <= n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);
		__m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
		_mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
	}
	for (; i < n; i++)
		x[i] = x[i] / (1.0f + expf(-x[i]));
}
/* EMA channels d0..d1-1 of one row, N (a multiple of 8) orders at a time. */
__attribute__((target("avx2,fma"))) static void ema_row_avx2(float *h, const float *q,
                                                           const float *pb, const float *g,
                                                           const float *omega, const float *xn,
                                                           float *out, int d0, int d1, int N)
{
	for (int d = d0; d < d1; d++) {
		const size_t o = (size_t)d * N;
		__m256 vu = _mm256_set1_ps(xn[d]), acc = _mm256_setzero_ps();
		for (int n = 0; n < N; n += 8) {
			__m256 hv = _mm256_fmadd_ps(_mm256_loadu_ps(q + o + n), _mm256_loadu_ps(h + o + n),
			                            _mm256_mul_ps(_mm256_loadu_ps(pb + o + n), vu));
			_mm256_storeu_ps(h + o + n, hv);
			acc = _mm256_fmadd_ps(hv, _mm256_loadu_ps(g + o + n), acc);
		}
		out[d] = hsum8(acc) + omega[d] * xn[d];
	}
}
/* Scores of one query against ring entries e0..e1-1 (slot sb_ring_slot(head, e, W1)). */
__attribute__((target("avx2,fma"))) static void ring_dots_avx2(const float *q, const float *K,
                                                             int Z, int W1, int head, int e0,
                                                             int e1, float scale, float *out)
{
	for (int e = e0; e < e1; e++) {
		const float *k = K + (size_t)sb_ring_slot(head, e, W1) * Z;
		__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
		int i = 0;
		for (; i + 16 <= Z; i += 16) {
			s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), s0);
			s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), s1);
		}
		for (; i + 8 <= Z; i += 8)
			s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), s0);
		float acc = hsum8(_mm256_add_ps(s0, s1));
		for (; i < Z; i++)
			acc += q[i] * k[i];
		out[e - e0] = acc * scale;
	}
}

/* og (H) += sum_e a[e-e0] * V[slot(e)], four entries per pass over og. */
__attribute__((target("avx2,fma"))) static void ring_accum_avx2(float *og, const float *a,
                                                              const float *V, int H, int W1,
                                                              int head, int e0, int e1)
{
	int e = e0;
	for (; e + 4 <= e1; e += 4) {
		const float *v0 = V + (size_t)sb_ring_slot(head, e, W1) * H,
		            *v1 = V + (size_t)sb_ring_slot(head, e + 1, W1) * H,
		            *v2 = V + (size_t)sb_ring_slot(head, e + 2, W1) * H,
		            *v3 = V + (size_t)sb_ring_slot(head, e + 3, W1) * H;
		__m256 a0 = _mm256_set1_ps(a[e - e0]), a1 = _mm256_set1_ps(a[e + 1 - e0]),
		       a2 = _mm256_set1_ps(a[e + 2 - e0]), a3 = _mm256_set1_ps(a[e + 3 - e0]);
		int i = 0;
		for (; i + 8 <= H; i += 8) {
			__m256 y = _mm256_loadu_ps(og + i);
			y = _mm256_fmadd_ps(a0, _mm256_loadu_ps(v0 + i), y);
			y = _mm256_fmadd_ps(a1, _mm256_loadu_ps(v1 + i), y);
			y = _mm256_fmadd_ps(a2, _mm256_loadu_ps(v2 + i), y);
			y = _mm256_fmadd_ps(a3, _mm256_loadu_ps(v3 + i), y);
			_mm256_storeu_ps(og + i, y);
		}
		for (; i < H; i++)
			og[i] += a[e - e0] * v0[i] + a[e + 1 - e0] * v1[i] + a[e + 2 - e0] * v2[i] +
			         a[e + 3 - e0] * v3[i];
	}
	for (; e < e1; e++) {
		const float *v = V + (size_t)sb_ring_slot(head, e, W1) * H;
		__m256 ae = _mm256_set1_ps(a[e - e0]);
		int i = 0;
		for (; i + 8 <= H; i += 8)
			_mm256_storeu_ps(og + i, _mm256_fmadd_ps(ae, _mm256_loadu_ps(v + i),
			                                         _mm256_loadu_ps(og + i)));
		for (; i < H; i++)
			og[i] += a[e - e0] * v[i];
	}
}
#endif

static void rows_scalar(const sb_mat *W, int r0, int r1, const float *x, float *y)
{
	const int n = W->cols;
	if (W->dtype == SB_DTYPE_I8) {
		const int nb = (n + SB_Q8_BLOCK - 1) / SB_Q8_BLOCK;
		for (int r = r0; r < r1; r++) {
			const int8_t *q = (const int8_t *)W->data + (size_t)r * n;
			const uint16_t *sc = (const uint16_t *)W->scales + (size_t)r * nb;
			float acc = 0.0f;
			for (int b = 0; b < nb; b++) {
				int end = (b + 1) * SB_Q8_BLOCK < n ? (b + 1) * SB_Q8_BLOCK : n;
				float part = 0.0f;
				for (int i = b * SB_Q8_BLOCK; i < end; i++)
					part += (float)q[i] * x[i];
				acc += part * f16_to_f32(sc[b]);
			}
			y[r] = acc;
		}
		return;
	}
	float buf[256];
	for (int r = r0; r < r1; r++) {
		const char *w = (const char *)W->data + (size_t)r * n * sb_dtype_size(W->dtype);
		float acc = 0.0f;
		for (int i0 = 0; i0 < n; i0 += 256) {
			int m = n - i0 < 256 ? n - i0 : 256;
			sb_widen(W->dtype, w + (size_t)i0 * sb_dtype_size(W->dtype), buf, (size_t)m);
			for (int i = 0; i < m; i++)
				acc += buf[i] * x[i0 + i];
		}
		y[r] = acc;
	}
}

typedef struct matvec_job {
	const sb_mat *W;
	const float *x;
	float *y;
} matvec_job;

/* Rows are split in blocks of 16 so that threads do not share cache lines
 * of y and each reads its own contiguous slab of W. */
static void matvec_part(void *arg, int ith, int nth)
{
	const matvec_job *j = arg;
	const int rows = j->W->rows, blocks = (rows + 15) / 16;
	int b0 = (int)((long)blocks * ith / nth), b1 = (int)((long)blocks * (ith + 1) / nth);
	int r0 = b0 * 16, r1 = b1 * 16 < rows ? b1 * 16 : rows;
	if (r0 >= r1)
		return;
#ifdef SB_X86
	if (have_avx2()) {
		rows_avx2(j->W, r0, r1, j->x, j->y);
		return;
	}
#endif
	rows_scalar(j->W, r0, r1, j->x, j->y);
}

/* Rows of a 16-bit or q8 matrix widened per slab, so that the float32
 * product runs at BLAS speed without a float32 copy of the whole model.
 * A slab is large enough that each sgemm call does real work (OpenBLAS
 * packs X again for every call), small enough to stay in the L2. */
#define WIDEN_ROWS 256
/* Threads split the output columns in multiples of this (cache lines of Y). */
#define SPLIT_ROWS 16

size_t sb_matmul_ws_floats(int max_cols, int n_threads)
{
	return (size_t)WIDEN_ROWS * (size_t)max_cols * (size_t)n_threads;
}

typedef struct matmul_job {
	float *Y;
	const float *X;
	int T;
	const sb_mat *W;
	const float *bias;
	float *ws;
} matmul_job;

/* One thread's share of Y = X W^T: a contiguous range of output columns
 * (rows of W), so each thread reads its own part of W once: float32
 * weights in one sgemm call, others widened slab by slab. OpenBLAS runs
 * single-threaded inside; the pool is the only set of threads, so the two
 * never compete for the cores. */
static void matmul_part(void *arg, int ith, int nth)
{
	const matmul_job *j = arg;
	const sb_mat *W = j->W;
	const int NO = W->rows, NI = W->cols, T = j->T;
	const int blocks = (NO + SPLIT_ROWS - 1) / SPLIT_ROWS;
	const int o_begin = (int)((long)blocks * ith / nth) * SPLIT_ROWS;
	const int o_end_raw = (int)((long)blocks * (ith + 1) / nth) * SPLIT_ROWS;
	const int o_end = o_end_raw < NO ? o_end_raw : NO;
	float *ws = j->ws + (size_t)ith * WIDEN_ROWS * NI;
	const int slab = W->dtype == SB_DTYPE_F32 ? NO : WIDEN_ROWS;
	for (int o0 = o_begin; o0 < o_end; o0 += slab) {
		int n = o_end - o0 < slab ? o_end - o0 : slab;
		const float *w;
		if (W->dtype == SB_DTYPE_F32) {
			w = (const float *)W->data + (size_t)o0 * NI;
		} else {
			for (int r = 0; r < n; r++)
				sb_mat_row(W, o0 + r, ws + (size_t)r * NI);
			w = ws;
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, NI, 1.0f, j->X, NI, w,
		            NI, 0.0f, j->Y + o0, NO);
		if (j->bias)
			for (int t = 0; t < T; t++) {
				float *y = j->Y + (size_t)t * NO + o0;
				for (int o = 0; o < n; o++)
					y[o] += j->bias[o0 + o];
			}
	}
}

typedef struct exact_job {
	const sb_mat *W;
	const float *X;
	bool wide;             /* the 512-bit kernels, else the AVX2 ones */
	int T;
	const float *bias;
	float *Y;
	int step;              /* rows of W per claim, a multiple of 16 */
	atomic_int next;       /* the first row of the next claim */
} exact_job;

#ifdef SB_X86
/* Threads claim ranges of output columns (rows of W) as they go, so that
 * one that starts late or is interrupted does not hold the others up. A
 * column's numbers do not depend on which thread computes it. */
static void exact_part(void *arg, int ith, int nth)
{
	(void)ith;
	exact_job *j = arg;
	const int rows = j->W->rows, step = j->step;
	for (;;) {
		const int r0 = atomic_fetch_add_explicit(&j->next, step, memory_order_relaxed);
		if (r0 >= rows)
			break;
		const int r1 = r0 + step < rows ? r0 + step : rows;
		if (j->wide) {
			/* the claim this thread is likely to make next */
			const int p0 = r0 + nth * step, p1 = p0 + step < rows ? p0 + step : rows;
			exact16_rows(j->W, r0, r1, j->X, j->T, j->bias, j->Y, p0, p1);
			continue;
		}
		exact_rows(j->W, r0, r1, j->X, j->T, j->Y);
		if (j->bias)
			for (int t = 0; t < j->T; t++) {
				float *restrict y = j->Y + (size_t)t * rows;
				const float *restrict b = j->bias;
				for (int o = r0; o < r1; o++)
					y[o] += b[o];
			}
	}
}
#endif

bool sb_matmul_has_exact(const sb_mat *W)
{
#ifdef SB_X86
	return have_avx2() && (W->dtype == SB_DTYPE_F32 || W->dtype == SB_DTYPE_F16 ||
	                       W->dtype == SB_DTYPE_BF16);
#else
	(void)W;
	return false;
#endif
}

void sb_matmul_exact(float *Y, const float *X, int T, const sb_mat *W, const float *bias,
                     float *ws, sb_pool *pool)
{
#ifdef SB_X86
	if (T > 1 && sb_matmul_has_exact(W)) {
		exact_job j = {W, X, have_avx512(), T, bias, Y, 0, 0};
		/* about 4 claims per thread, of 16 to EXACT_CHUNK rows */
		const int nth = sb_pool_threads(pool);
		int step = (W->rows / (4 * nth) + 15) / 16 * 16;
		j.step = step < 16 ? 16 : step > EXACT_CHUNK ? EXACT_CHUNK : step;
		atomic_init(&j.next, 0);
		sb_pool_run(pool, exact_part, &j);
		return;
	}
#endif
	sb_matmul(Y, X, T, W, bias, ws, pool);
}

void sb_matmul(float *Y, const float *X, int T, const sb_mat *W, const float *bias,
               float *ws, sb_pool *pool)
{
	const int NO = W->rows;
	if (T == 1) {
		matvec_job j = {W, X, Y};
		sb_pool_run(pool, matvec_part, &j);
		if (bias)
			for (int o = 0; o < NO; o++)
				Y[o] += bias[o];
		return;
	}
	matmul_job j = {Y, X, T, W, bias, ws};
	sb_pool_run(pool, matmul_part, &j);
}

void sb_ema_row(float *h, const float *q, const float *pb, const float *g, const float *omega,
                const float *xn, float *out, int d0, int d1, int N)
{
#ifdef SB_X86
	if (N % 8 == 0 && have_avx2()) {
		ema_row_avx2(h, q, pb, g, omega, xn, out, d0, d1, N);
		return;
	}
#endif
	for (int d = d0; d < d1; d++) {
		const size_t o = (size_t)d * N;
		float acc = 0.0f, u = xn[d];
		for (int n = 0; n < N; n++) {
			h[o + n] = q[o + n] * h[o + n] + pb[o + n] * u;
			acc += h[o + n] * g[o + n];
		}
		out[d] = acc + omega[d] * u;
	}
}

void sb_ring_dots(const float *q, const float *K, int Z, int W1, int head, int e0, int e1,
                  float scale, float *out)
{
#ifdef SB_X86
	if (have_avx2()) {
		ring_dots_avx2(q, K, Z, W1, head, e0, e1, scale, out);
		return;
	}
#endif
	for (int e = e0; e < e1; e++) {
		const float *k = K + (size_t)sb_ring_slot(head, e, W1) * Z;
		float acc = 0.0f;
		for (int i = 0; i < Z; i++)
			acc += q[i] * k[i];
		out[e - e0] = acc * scale;
	}
}

void sb_ring_accum(float *og, const float *a, const float *V, int H, int W1, int head, int e0,
                   int e1)
{
#ifdef SB_X86
	if (have_avx2()) {
		ring_accum_avx2(og, a, V, H, W1, head, e0, e1);
		return;
	}
#endif
	for (int e = e0; e < e1; e++) {
		const float *v = V + (size_t)sb_ring_slot(head, e, W1) * H;
		for (int i = 0; i < H; i++)
			og[i] += a[e - e0] * v[i];
	}
}

void sb_axpy(float *y, float a, const float *x, int n)
{
#ifdef SB_X86
	if (have_avx2()) {
		axpy_avx2(y, a, x, n);
		return;
	}
#endif
	for (int i = 0; i < n; i++)
		y[i] += a * x[i];
}

#define NORM_EPS 1e-5f

/* y = the normed x from its statistics: (x - mean) * inv (then weight
 * and bias) for a layernorm, w * x * inv for the others (mean unused). */
static void norm_finish(const sb_norm *nm, float *y, const float *x, int D, float mean,
                        float inv)
{
	if (nm->kind == SB_NORM_LAYERNORM) {
		for (int i = 0; i < D; i++) {
			float v = (x[i] - mean) * inv;
			if (nm->weight)
				v = v * nm->weight[i] + nm->bias[i];
			y[i] = v;
		}
		return;
	}
	for (int i = 0; i < D; i++) {
		float w = nm->kind == SB_NORM_SCALENORM ? nm->scalar
		          : nm->weight                 ? nm->weight[i]
		                                       : 1.0f;
		y[i] = w * x[i] * inv;
	}
}

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
		norm_finish(nm, y, x, D, mean, 1.0f / sqrtf(var + NORM_EPS));
		break;
	}
	case SB_NORM_SCALENORM:
	case SB_NORM_RMSNORM: {
		float ms = 0.0f;
		for (int i = 0; i < D; i++)
			ms += x[i] * x[i];
		ms /= (float)D;
		norm_finish(nm, y, x, D, 0.0f, 1.0f / sqrtf(ms + NORM_EPS));
		break;
	}
	}
}

/* Rows per group of sb_norm_rows. */
#define NORM_ROWS 8

void sb_norm_rows(const sb_norm *nm, float *y, const float *x, int n, int D)
{
	int r0 = 0;
	/* Each sum is a chain of dependent adds; NORM_ROWS rows side by side
	 * are as many independent chains, each in its row's own order (the
	 * numbers of sb_norm_apply), instead of one chain at a time. */
	for (; r0 + NORM_ROWS <= n; r0 += NORM_ROWS) {
		const float *xr = x + (size_t)r0 * D;
		float *yr = y + (size_t)r0 * D;
		float a[NORM_ROWS], b[NORM_ROWS];
		for (int r = 0; r < NORM_ROWS; r++)
			a[r] = b[r] = 0.0f;
		if (nm->kind == SB_NORM_LAYERNORM) {
			for (int i = 0; i < D; i++)
				for (int r = 0; r < NORM_ROWS; r++)
					a[r] += xr[(size_t)r * D + i];
			for (int r = 0; r < NORM_ROWS; r++)
				a[r] /= (float)D;
			for (int i = 0; i < D; i++)
				for (int r = 0; r < NORM_ROWS; r++) {
					float d = xr[(size_t)r * D + i] - a[r];
					b[r] += d * d;
				}
		} else {
			for (int i = 0; i < D; i++)
				for (int r = 0; r < NORM_ROWS; r++)
					b[r] += xr[(size_t)r * D + i] * xr[(size_t)r * D + i];
		}
		for (int r = 0; r < NORM_ROWS; r++) {
			b[r] /= (float)D;
			norm_finish(nm, yr + (size_t)r * D, xr + (size_t)r * D, D, a[r],
			            1.0f / sqrtf(b[r] + NORM_EPS));
		}
	}
	for (; r0 < n; r0++)
		sb_norm_apply(nm, y + (size_t)r0 * D, x + (size_t)r0 * D, D);
}

float sb_silu(float x)
{
	return x / (1.0f + expf(-x));
}

void sb_activate(sb_act_kind k, float *x, size_t n)
{
	switch (k) {
	case SB_ACT_SILU:
#ifdef SB_X86
		if (have_avx2()) {
			silu_avx2(x, n);
			break;
		}
#endif
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

void sb_rotary(float *q, float *k, int Z, int64_t pos, const double *inv_freq)
{
	for (int i = 0; i < Z / 2; i++) {
		/* Double precision: positions pass 2^24 in long generations. */
		double ang = (double)pos * inv_freq[i];
		float c = (float)cos(ang), s = (float)sin(ang);
		float q0 = q[2 * i], q1 = q[2 * i + 1], k0 = k[2 * i], k1 = k[2 * i + 1];
		q[2 * i] = q0 * c - q1 * s;
		q[2 * i + 1] = q0 * s + q1 * c;
		k[2 * i] = k0 * c - k1 * s;
		k[2 * i + 1] = k0 * s + k1 * c;
	}
}
