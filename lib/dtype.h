/*
 * dtype.h - widening 16-bit floats to float32, inline for the kernels of
 * every backend's host code (lib/dtype.c has the array forms).
 */
#ifndef SB_DTYPE_H
#define SB_DTYPE_H

#include <stdint.h>
#include <string.h>

static inline float sb_bf16_to_f32_inline(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline float sb_f16_to_f32_inline(uint16_t h)
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

#endif /* SB_DTYPE_H */
