/*
 * fuzz-jsonl.c - `seqboat complete`'s reading of a prompt file: splitting
 * lines, parsing each JSONL record and its settings, ids, duplicates. The
 * functions are static in cmd/complete.c, so this harness includes the file
 * and calls them as cmd_complete does; nothing is generated. The first
 * input byte picks --format-in (auto, text, jsonl).
 */
#define _GNU_SOURCE
#include <stdio.h>

#include "../../cmd/complete.c"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	static const fmt fmts[3] = {FMT_AUTO, FMT_TEXT, FMT_JSONL};
	run r;
	memset(&r, 0, sizeof r);
	cli_gen_init(&r.g, 256);
	r.g.sp.seed = 0;
	r.in_fmt = fmts[data[0] % 3];
	/* fmemopen refuses an empty buffer: keep one byte, a newline. */
	char *copy = malloc(size);
	fuzz_check(copy != NULL);
	memcpy(copy, data + 1, size - 1);
	copy[size - 1] = '\n';
	FILE *f = fmemopen(copy, size, "rb");
	fuzz_check(f != NULL);
	/* the two passes cmd_complete makes: the scan, then the items */
	r.input_hash = r.hash_again = CLI_FNV_START;
	r.in_name = "fuzz.jsonl";
	int rc = scan_input(&r, f, "fuzz.jsonl", NULL);
	fuzz_check(rc == 0 && fseeko(f, 0, SEEK_SET) == 0);
	r.rd = cli_lines_new(f);
	fuzz_check(r.rd != NULL);
	size_t n_items = 0;
	item *it;
	while ((it = read_next(&r))) {
		n_items++;
		fuzz_check(it->key && (it->error || it->prompt));
		if (it->error) {
			error_record(&r, it, it->error);
			fuzz_check(it->record && !strchr(it->record, '\n'));
			json_error_t je;
			json_t *back = json_loads(it->record, 0, &je);
			fuzz_check(back && json_is_object(back));
			json_decref(back);
		}
	}
	/* the second pass read what the first did */
	fuzz_check(r.rc == 0 && n_items == r.n_shard && r.index == r.n_input);
	fclose(f);
	for (size_t i = 0; i < r.win_n; i++) {
		item_free(r.win[i]);
		free(r.win[i]);
	}
	free(r.win);
	cli_keyset_free(&r.ids);
	cli_lines_free(r.rd);
	cli_gen_free(&r.g);
	free(copy);
	return 0;
}
