/*
 * fuzz-safetensors.c - the safetensors reader (sb_st_open_memory) on any
 * bytes: it must refuse with one line or return tensors that lie inside
 * the buffer with the sizes their shapes give.
 */
#include <string.h>

#include "fuzz.h"
#include "seqboat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sb_error err = {0};
	sb_st_file *f = sb_st_open_memory(data, size, "fuzz.safetensors", &err);
	if (!f) {
		fuzz_check(err.code < 0 && err.msg[0]);
		fuzz_check(!strchr(err.msg, '\n'));
		return 0;
	}
	fuzz_check(sb_st_file_size(f) == size);
	size_t n = sb_st_count(f);
	volatile uint8_t sink = 0;
	for (size_t i = 0; i < n; i++) {
		const sb_tensor *t = sb_st_tensor_at(f, i);
		fuzz_check(t && t->name && t->ndim >= 0 && t->ndim <= SB_MAX_DIMS);
		fuzz_check((int)t->dtype >= 0 && t->dtype < SB_DTYPE_COUNT);
		uint64_t numel = 1;
		for (int d = 0; d < t->ndim; d++)
			numel *= t->shape[d];
		fuzz_check(numel == t->numel);
		fuzz_check(t->nbytes == t->numel * sb_dtype_size(t->dtype));
		fuzz_check(t->nbytes <= size);
		fuzz_check(((uintptr_t)t->data % sb_dtype_size(t->dtype)) == 0);
		fuzz_check(sb_st_find(f, t->name) == t);
		/* Every byte must be readable: the sanitizers catch a tensor that
		 * reaches past the buffer. */
		const uint8_t *p = t->data;
		for (size_t b = 0; b < t->nbytes; b++)
			sink ^= p[b];
	}
	(void)sink;
	(void)sb_st_metadata(f, "format");
	fuzz_check(!sb_st_find(f, "\x01no such tensor"));
	sb_st_close(f);
	return 0;
}
