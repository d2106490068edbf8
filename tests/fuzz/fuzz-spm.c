/*
 * fuzz-spm.c - a SentencePiece tokenizer.model (sb_tokenizer_load: the
 * shim's protobuf walk, the charsmap check, then SentencePiece itself) on
 * any bytes, and encoding text with every model that loads. The first
 * byte is the length of the text, which follows it; the rest is the model.
 * A refusal is one line; an accepted model encodes to ids in range that
 * decode without error.
 */
#define _GNU_SOURCE
#include <string.h>

#include "fuzz.h"
#include "memfile.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	if (!size)
		return 0;
	size_t tlen = data[0];
	if (tlen > size - 1)
		tlen = size - 1;
	const char *text = (const char *)data + 1;
	const uint8_t *model = data + 1 + tlen;
	size_t msize = size - 1 - tlen;
	int fd = memfile(model, msize, path, sizeof path);
	if (fd < 0)
		return 0;
	sb_error err = {0};
	sb_tokenizer *t = sb_tokenizer_load(SB_TOK_SENTENCEPIECE, path, SB_BYTES_AUTO, &err);
	close(fd);
	if (!t) {
		fuzz_check(err.code < 0 && err.msg[0]);
		fuzz_check(!strchr(err.msg, '\n'));
		return 0;
	}
	int V = sb_tokenizer_vocab_size(t);
	fuzz_check(V > 0);
	/* Normalization runs on the text given and on characters a charsmap
	 * usually maps (full-width letters, ligatures, spaces). */
	const char *samples[] = {"Hello  world", "\xef\xbc\xa8\xef\xbd\x85 \xef\xac\x81 \xe2\x91\xa0", "A B\tC\n"};
	for (size_t k = 0; k < 4; k++) {
		const char *s = k < 3 ? samples[k] : text;
		size_t n = k < 3 ? strlen(samples[k]) : tlen;
		if (sb_utf8_valid(s, n) != n)
			continue;
		int32_t *ids = NULL;
		size_t n_ids = 0;
		if (sb_tokenizer_encode(t, s, n, true, &ids, &n_ids, &err) == 0) {
			for (size_t i = 0; i < n_ids; i++)
				fuzz_check(ids[i] >= 0 && ids[i] < V);
			char *out = NULL;
			size_t olen = 0;
			fuzz_check(sb_tokenizer_decode(t, ids, n_ids, &out, &olen, &err) == 0);
			free(out);
		} else {
			fuzz_check(err.msg[0] && !strchr(err.msg, '\n'));
		}
		free(ids);
	}
	sb_tokenizer_free(t);
	return 0;
}
