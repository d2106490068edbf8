/* utf8.c - UTF-8 validation and the incremental assembler behind sb_detok.
 * The rules are SentencePiece's (string_util::DecodeUTF8), so that bytes
 * streamed one by one decode to the same text as a whole-sequence decode. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

enum { UTF8_INVALID = -1, UTF8_INCOMPLETE = 0, UTF8_VALID = 1 };

/* Reads the character starting at s[0] (n >= 1 bytes available).
 * UTF8_VALID with *len its length; UTF8_INCOMPLETE when the bytes so far
 * could still begin a well-formed character; UTF8_INVALID when s[0] cannot
 * start one given what follows. */
static int utf8_char(const uint8_t *s, size_t n, size_t *len)
{
	uint8_t b0 = s[0];
	size_t need;
	uint8_t lo = 0x80, hi = 0xBF;   /* range of the second byte */
	if (b0 < 0x80) {
		*len = 1;
		return UTF8_VALID;
	} else if (b0 >= 0xC2 && b0 <= 0xDF) {
		need = 2;
	} else if (b0 >= 0xE0 && b0 <= 0xEF) {
		need = 3;
		if (b0 == 0xE0)
			lo = 0xA0;      /* below is an overlong form */
		else if (b0 == 0xED)
			hi = 0x9F;      /* above are surrogates */
	} else if (b0 >= 0xF0 && b0 <= 0xF4) {
		need = 4;
		if (b0 == 0xF0)
			lo = 0x90;
		else if (b0 == 0xF4)
			hi = 0x8F;      /* above is past U+10FFFF */
	} else {
		return UTF8_INVALID;
	}
	for (size_t i = 1; i < need; i++) {
		if (i >= n)
			return UTF8_INCOMPLETE;
		uint8_t lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
		if (s[i] < lo_i || s[i] > hi_i)
			return UTF8_INVALID;
	}
	*len = need;
	return UTF8_VALID;
}

size_t sb_utf8_valid(const char *s, size_t len)
{
	const uint8_t *u = (const uint8_t *)s;
	size_t i = 0;
	while (i < len) {
		size_t n;
		if (utf8_char(u + i, len - i, &n) != UTF8_VALID)
			return i;
		i += n;
	}
	return len;
}

int sb_tbuf_put(sb_tbuf *b, const void *s, size_t len)
{
	size_t need;
	if (!sb_size_add(b->n, len, &need) || !sb_size_add(need, 1, &need))
		return SB_ERR_NOMEM;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < need) {
			if (!sb_size_mul(cap, 2, &cap))
				return SB_ERR_NOMEM;
		}
		char *p = realloc(b->p, cap);
		if (!p)
			return SB_ERR_NOMEM;
		b->p = p;
		b->cap = cap;
	}
	if (len)
		memcpy(b->p + b->n, s, len);
	b->n += len;
	b->p[b->n] = 0;
	return 0;
}

void sb_tbuf_free(sb_tbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}

/* Emits what the pending bytes decide; with `final`, incomplete ones too. */
static int asm_drain(sb_utf8_asm *a, sb_tbuf *out, bool final)
{
	while (a->n > 0) {
		size_t len = 0;
		int r = utf8_char(a->pend, a->n, &len);
		if (r == UTF8_INCOMPLETE && !final)
			return 0;
		int rc;
		if (r == UTF8_VALID) {
			rc = sb_tbuf_put(out, a->pend, len);
		} else {
			len = 1;
			rc = sb_tbuf_put(out, SB_UTF8_REPLACEMENT, 3);
		}
		if (rc)
			return rc;
		memmove(a->pend, a->pend + len, a->n - len);
		a->n -= len;
	}
	return 0;
}

int sb_utf8_asm_push(sb_utf8_asm *a, uint8_t b, sb_tbuf *out)
{
	/* Pending bytes are always an incomplete prefix (at most 3 bytes): a
	 * complete character or an invalid lead is drained at once. */
	a->pend[a->n++] = b;
	return asm_drain(a, out, false);
}

int sb_utf8_asm_finish(sb_utf8_asm *a, sb_tbuf *out)
{
	return asm_drain(a, out, true);
}
