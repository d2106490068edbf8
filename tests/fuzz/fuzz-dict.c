/*
 * fuzz-dict.c - the fairseq dictionary reader (sb_tokenizer_load) on any
 * bytes. A refusal is one line; an accepted dictionary encodes its own text
 * and decodes the ids to what the streaming decoder gives.
 */
#define _GNU_SOURCE
#include <string.h>

#include "fuzz.h"
#include "memfile.h"
#include "tokenizer.h"

/* decode(ids) must equal what sb_detok streams for the same ids. */
static void check_decode(const sb_tokenizer *t, const int32_t *ids, size_t n)
{
	sb_error err = {0};
	char *text = NULL;
	size_t len = 0;
	fuzz_check(sb_tokenizer_decode(t, ids, n, &text, &len, &err) == 0);
	sb_detok *d = sb_detok_new(t, &err);
	fuzz_check(d != NULL);
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		const char *o;
		size_t ol;
		fuzz_check(sb_detok_push(d, ids[i], &o, &ol, &err) == 0);
		fuzz_check(at + ol <= len && memcmp(text + at, o, ol) == 0);
		at += ol;
	}
	const char *o;
	size_t ol;
	sb_detok_flush(d, &o, &ol);
	fuzz_check(at + ol == len && memcmp(text + at, o, ol) == 0);
	sb_detok_free(d);
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	if (!size)
		return 0;
	/* The first byte picks the byte-symbol mode; the rest is the file. */
	sb_bytes_mode mode = (sb_bytes_mode)(data[0] % 3 - 1);
	data++;
	size--;
	int fd = memfile(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	sb_error err = {0};
	sb_tokenizer *t = sb_tokenizer_load(SB_TOK_FAIRSEQ, path, mode, &err);
	close(fd);
	if (!t) {
		fuzz_check(err.code < 0 && err.msg[0]);
		fuzz_check(!strchr(err.msg, '\n'));
		return 0;
	}
	int V = sb_tokenizer_vocab_size(t);
	fuzz_check(V >= 4);
	for (int id = 0; id < V; id++)
		fuzz_check(sb_tokenizer_piece(t, id) != NULL);
	fuzz_check(sb_tokenizer_piece(t, V) == NULL);

	int32_t *ids = NULL;
	size_t n = 0;
	if (sb_utf8_valid((const char *)data, size) == size &&
	    sb_tokenizer_encode(t, (const char *)data, size, true, &ids, &n, &err) == 0) {
		for (size_t i = 0; i < n; i++)
			fuzz_check(ids[i] >= 0 && ids[i] < V);
		check_decode(t, ids, n);
	}
	free(ids);

	/* Every id once, in order. */
	int32_t *all = malloc((size_t)V * sizeof *all);
	fuzz_check(all != NULL);
	for (int id = 0; id < V; id++)
		all[id] = id;
	check_decode(t, all, (size_t)V);
	free(all);
	sb_tokenizer_free(t);
	return 0;
}
