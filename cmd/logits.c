/* logits.c - `seqboat logits`: the comparison contract with other
 * implementations. Writes 'logits' (F32 [T, V], row t = the prediction
 * after ids[0..t]) and 'act' (U8 [L, T]) to a safetensors file. */
#include <getopt.h>
#include <stdlib.h>

#include "commands.h"
#include "common.h"

static const char usage_text[] =
	"usage: seqboat logits [-m DIR] --ids \"ID ID ...\" -o OUT.safetensors\n"
	"                      [--prefill | --split K] [--hidden] [--act-bias X] [-t N]\n"
	"                      [--device D]\n\n"
	"Reads the token ids and writes, for every position t, the logits after\n"
	"ids[0..t] ('logits', F32 [T, V]) and each layer's router decision ('act',\n"
	"U8 [L, T]). Default: token-by-token decode.\n\n"
	"  -m, --model DIR     model directory (default: the bundled model)\n"
	"      --ids IDS       token ids separated by spaces or commas\n"
	"  -o, --output FILE   the safetensors file to write (atomically)\n"
	"      --prefill       read all ids in one prefill call\n"
	"      --split K       prefill the first K ids, then decode the rest\n"
	"      --hidden        also write 'hidden' (F32 [L, T, D]), each block's output\n"
	"      --act-bias X    shift the router: positive = fewer activations (default 0)\n"
	"  -t, --threads N     threads (default and 0: all cores; more than the cores\n"
	"                      are lowered to their number, with a warning)\n"
	"      --device D      compute on D: cpu (default), or cuda / cuda:N where\n"
	"                      this build has the CUDA backend\n"
	"  -h, --help          show this help\n";

enum { OPT_DEVICE = 256 };

int cmd_logits(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'},
		{"ids", required_argument, 0, 'i'},
		{"output", required_argument, 0, 'o'},
		{"prefill", no_argument, 0, 'p'},
		{"split", required_argument, 0, 's'},
		{"hidden", no_argument, 0, 'H'},
		{"act-bias", required_argument, 0, 'b'},
		{"threads", required_argument, 0, 't'},
		{"device", required_argument, 0, OPT_DEVICE},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	const char *dir = NULL, *ids_arg = NULL, *outp = NULL;
	long split = -1;
	bool prefill = false, hidden = false;
	float act_bias = 0.0f;
	int threads = 0, o;
	const char *device = NULL;
	while ((o = getopt_long(argc, argv, "m:o:t:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': dir = optarg; break;
		case 'i': ids_arg = optarg; break;
		case 'o': outp = optarg; break;
		case 'p': prefill = true; break;
		case 's':
			if (!cli_parse_long("--split", optarg, 0, 1L << 40, &split))
				return CLI_EXIT_USAGE;
			break;
		case 'H': hidden = true; break;
		case 'b':
			if (!cli_parse_act_bias(optarg, &act_bias))
				return CLI_EXIT_USAGE;
			break;
		case 't':
			if (!cli_parse_threads(optarg, &threads))
				return CLI_EXIT_USAGE;
			break;
		case OPT_DEVICE: device = optarg; break;
		case 'h': fputs(usage_text, stdout); return 0;
		default: return cli_bad_option("logits", argv);
		}
	}
	if (cli_no_operands("logits", argc, argv))
		return CLI_EXIT_USAGE;
	if (!ids_arg || !outp) {
		cli_error("logits: --ids and -o are required (see 'seqboat logits --help')");
		return CLI_EXIT_USAGE;
	}
	if (prefill && split >= 0) {
		cli_error("logits: --prefill and --split exclude each other");
		return CLI_EXIT_USAGE;
	}
	int32_t *ids = NULL;
	size_t T = 0;
	int rc = cli_parse_ids("--ids", ids_arg, &ids, &T);
	if (rc)
		return rc;
	if (T == 0) {
		cli_error("--ids: expected at least one token id");
		free(ids);
		return CLI_EXIT_USAGE;
	}
	if (split > (long)T) {
		cli_error("--split: %ld is more than the %zu ids given", split, T);
		free(ids);
		return CLI_EXIT_USAGE;
	}
	if (prefill)
		split = (long)T;
	if (split < 0)
		split = 0;

	sb_model *m = NULL;
	sb_ctx *ctx = NULL;
	sb_state *st = NULL;
	float *logits = NULL, *hid = NULL;
	uint8_t *act = NULL;
	sb_error err = {0};
	if ((rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO)))
		goto out;
	const sb_config *c = sb_model_config(m);
	const size_t V = (size_t)c->vocab_size, L = (size_t)c->layers, D = (size_t)c->embed_dim;
	size_t nl, na, nh;
	if (!sb_size_mul(T, V, &nl) || !sb_size_mul(L, T, &na) || !sb_size_mul(na, D, &nh) ||
	    !(logits = malloc(nl * sizeof(float))) || !(act = calloc(na, 1)) ||
	    (hidden && !(hid = malloc(nh * sizeof(float))))) {
		cli_error("logits: out of memory for %zu tokens", T);
		rc = CLI_EXIT_SOFTWARE;
		goto out;
	}
	sb_ctx_params cp = sb_ctx_default_params();
	cp.n_threads = threads;
	cp.act_bias = act_bias;
	cp.device = device;
	if (!(ctx = sb_ctx_new(m, &cp, &err)) || !(st = sb_ctx_state_new(ctx, &err))) {
		rc = cli_fail(&err);
		goto out;
	}
	sb_outputs outs = {.logits = logits, .act = act, .hidden = hid, .stride = T, .offset = 0};
	if (split > 0 && sb_prefill(ctx, st, ids, (size_t)split, &outs, &err) < 0) {
		rc = cli_fail(&err);
		goto out;
	}
	for (size_t t = (size_t)split; t < T; t++) {
		outs.offset = t;
		if (sb_prefill(ctx, st, ids + t, 1, &outs, &err) < 0) {
			rc = cli_fail(&err);
			goto out;
		}
	}
	sb_st_entry e[3] = {
		{.name = "logits", .dtype = SB_DTYPE_F32, .ndim = 2, .shape = {T, V}, .data = logits},
		{.name = "act", .dtype = SB_DTYPE_U8, .ndim = 2, .shape = {L, T}, .data = act},
		{.name = "hidden", .dtype = SB_DTYPE_F32, .ndim = 3, .shape = {L, T, D}, .data = hid},
	};
	if (sb_st_write(outp, e, hidden ? 3 : 2, NULL, &err) < 0)
		rc = cli_fail(&err);
out:
	free(ids);
	free(logits);
	free(act);
	free(hid);
	sb_state_free(st);
	sb_ctx_free(ctx);
	sb_model_free(m);
	return rc;
}
