/*
 * fuzz-utf8.c - the streaming UTF-8 decoder (sb_detok) over the byte form of
 * a fairseq dictionary (symbols "0".."255"): each input byte is one token.
 * Every chunk it hands out is whole UTF-8; the chunks plus the flush equal
 * sb_tokenizer_decode of the same ids; and valid UTF-8 comes back as it went
 * in. The first input byte picks the mode: bit 0 mid-text (reset to not at
 * start), bit 1 ids from byte pairs over the whole vocabulary (control ids
 * included) instead of one byte per token.
 */
#define _GNU_SOURCE
#include <string.h>

#include "fuzz.h"
#include "memfile.h"
#include "tokenizer.h"

static sb_tokenizer *bytes_tokenizer(void)
{
	static sb_tokenizer *t;
	if (t)
		return t;
	char dict[256 * 8], path[64];
	size_t n = 0;
	for (int v = 0; v < 256; v++)
		n += (size_t)snprintf(dict + n, sizeof dict - n, "%d 1\n", v);
	int fd = memfile((const uint8_t *)dict, n, path, sizeof path);
	fuzz_check(fd >= 0);
	sb_error err = {0};
	t = sb_tokenizer_load(SB_TOK_FAIRSEQ, path, SB_BYTES_ON, &err);
	close(fd);
	if (!t)
		fprintf(stderr, "%s\n", err.msg);
	fuzz_check(t && sb_tokenizer_is_bytes(t));
	/* Symbol v is on line v + 1, after the four implicit ids. */
	fuzz_check(!strcmp(sb_tokenizer_piece(t, 4 + 65), "65"));
	return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sb_tokenizer *t = bytes_tokenizer();
	if (!size)
		return 0;
	int mode = data[0];
	data++;
	size--;
	bool pairs = mode & 2, at_start = !(mode & 1);
	int V = sb_tokenizer_vocab_size(t);
	size_t n = pairs ? size / 2 : size;
	int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
	fuzz_check(ids != NULL);
	for (size_t i = 0; i < n; i++)
		ids[i] = pairs ? (int32_t)(((data[2 * i] << 8) | data[2 * i + 1]) % V)
		               : 4 + data[i];

	sb_error err = {0};
	sb_detok *d = sb_detok_new(t, &err);
	fuzz_check(d != NULL);
	sb_detok_reset(d, at_start);
	char *got = malloc(3 * (n + 4) + 1);
	fuzz_check(got != NULL);
	size_t len = 0;
	for (size_t i = 0; i < n; i++) {
		const char *o;
		size_t ol;
		fuzz_check(sb_detok_push(d, ids[i], &o, &ol, &err) == 0);
		fuzz_check(sb_utf8_valid(o, ol) == ol);
		fuzz_check(len + ol <= 3 * (n + 4));
		memcpy(got + len, o, ol);
		len += ol;
	}
	const char *o;
	size_t ol;
	sb_detok_flush(d, &o, &ol);
	fuzz_check(sb_utf8_valid(o, ol) == ol);
	memcpy(got + len, o, ol);
	len += ol;
	fuzz_check(sb_utf8_valid(got, len) == len);

	if (at_start) {
		char *text = NULL;
		size_t tl = 0;
		fuzz_check(sb_tokenizer_decode(t, ids, n, &text, &tl, &err) == 0);
		fuzz_check(tl == len && !memcmp(text, got, len));
		free(text);
	}
	if (!pairs && sb_utf8_valid((const char *)data, size) == size)
		fuzz_check(len == size && !memcmp(got, data, size));

	/* A reset forgets what was pending. */
	sb_detok_reset(d, true);
	sb_detok_flush(d, &o, &ol);
	fuzz_check(ol == 0);
	free(got);
	free(ids);
	sb_detok_free(d);
	return 0;
}
