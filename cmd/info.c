/* info.c - `seqboat info`: what a model is and what a sequence costs. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "common.h"

static const char usage_text[] =
	"usage: seqboat info [-m DIR] [--json] [--check]\n\n"
	"Shows a model's architecture, every hyper-parameter, the parameter count,\n"
	"the weights' file size and dtype, and the exact bytes of the per-sequence\n"
	"state (EMA plus window ring), which does not depend on the sequence length.\n\n"
	"  -m, --model DIR   model directory (default: the bundled model)\n"
	"      --json        print one JSON object instead of text\n"
	"      --check       also read every weight and refuse a NaN or an infinity\n"
	"                    (loading checks only the small tensors; see --check of\n"
	"                    the generating commands)\n"
	"  -h, --help        show this help\n";

int cmd_info(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'},
		{"json", no_argument, 0, 'j'},
		{"check", no_argument, 0, 'c'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	const char *dir = NULL;
	bool json = false, check = false;
	int o;
	while ((o = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': dir = optarg; break;
		case 'j': json = true; break;
		case 'c': check = true; break;
		case 'h': fputs(usage_text, stdout); return 0;
		default: return cli_bad_option("info", argv);
		}
	}
	if (cli_no_operands("info", argc, argv))
		return CLI_EXIT_USAGE;
	sb_model *m;
	int rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO);
	if (rc)
		return rc;
	sb_error err = {0};
	if (check && sb_model_check_weights(m, &err) < 0) {
		sb_model_free(m);
		return cli_fail(&err);
	}
	const sb_config *c = sb_model_config(m);
	sb_state_sizes sz = sb_state_sizes_of(m);
	size_t ema = sz.ema, ring = sz.ring, state = sz.total, counters = sz.counters;
	if (json) {
		json_t *o = json_pack(
			"{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:s, s:s,"
			" s:b, s:b, s:b, s:b, s:I, s:I, s:s, s:I, s:I, s:I}",
			"model_dir", sb_model_dir(m), "name", c->name, "architecture", "seqboat",
			"vocab_size", c->vocab_size, "embed_dim", c->embed_dim, "z_dim", c->z_dim,
			"hidden_dim", c->hidden_dim, "n_dim", c->n_dim, "layers", c->layers,
			"window", c->window, "ffn_dim", c->ffn_dim, "max_positions", c->max_positions,
			"rel_pos_bias", sb_pos_name(c->rel_pos), "attention", sb_attn_name(c->attention),
			"norm", sb_norm_name(c->norm), "activation", sb_act_name(c->activation),
			"normalize_before", c->normalize_before, "affine_final_norm", c->affine_final_norm,
			"scale_embedding", c->scale_embedding, "tied_embeddings", c->tied_embeddings,
			"n_params", (json_int_t)sb_model_n_params(m),
			"file_bytes", (json_int_t)sb_model_file_bytes(m),
			"dtype", cli_weights_name(m),
			"state_bytes", (json_int_t)state, "state_ema_bytes", (json_int_t)ema,
			"state_ring_bytes", (json_int_t)ring);
		if (!o || json_dumpf(o, stdout, JSON_COMPACT) != 0) {
			cli_error("info: cannot format JSON");
			json_decref(o);
			sb_model_free(m);
			return CLI_EXIT_SOFTWARE;
		}
		putchar('\n');
		json_decref(o);
	} else {
		printf("model            %s%s%s%s\n", sb_model_dir(m), c->name[0] ? " (" : "",
		       c->name, c->name[0] ? ")" : "");
		printf("architecture     seqboat: %d layers, EMA + sparsely routed gated attention\n",
		       c->layers);
		printf("vocab_size   V   %d\n", c->vocab_size);
		printf("embed_dim    D   %d\n", c->embed_dim);
		printf("z_dim        Z   %d\n", c->z_dim);
		printf("hidden_dim   H   %d\n", c->hidden_dim);
		printf("n_dim        N   %d\n", c->n_dim);
		printf("layers       L   %d\n", c->layers);
		printf("window       W   %d activated tokens\n", c->window);
		printf("ffn_dim      F   %d%s\n", c->ffn_dim, c->ffn_dim ? "" : " (no FFN)");
		printf("max_positions M  %d\n", c->max_positions);
		printf("rel_pos_bias     %s\n", sb_pos_name(c->rel_pos));
		printf("attention        %s\n", sb_attn_name(c->attention));
		printf("norm             %s, %s\n", sb_norm_name(c->norm),
		       c->normalize_before ? "pre-norm" : "post-norm");
		printf("final norm       %s\n", !c->normalize_before ? "none (post-norm)"
		                                : c->affine_final_norm ? "affine" : "plain");
		printf("activation       %s\n", sb_act_name(c->activation));
		printf("embedding        %s, %s\n", c->scale_embedding ? "scaled by sqrt(D)" : "unscaled",
		       c->tied_embeddings ? "tied to the output" : "separate output projection");
		printf("tokenizer        %s (%s)\n",
		       c->tokenizer == SB_TOK_SENTENCEPIECE ? "sentencepiece" : "fairseq dictionary",
		       c->tokenizer_file);
		printf("parameters       %llu\n", (unsigned long long)sb_model_n_params(m));
		printf("weights file     %zu bytes, %s\n", sb_model_file_bytes(m),
		       cli_weights_name(m));
		printf("state            %zu bytes per sequence, at any length\n", state);
		printf("  EMA            %zu bytes (L x D x N floats)\n", ema);
		printf("  window ring    %zu bytes (L x (W+1) x (Z+H) floats + positions)\n", ring);
		printf("  counters       %zu bytes\n", counters);
		if (c->source[0])
			printf("source           %s\n", c->source);
		if (c->license[0])
			printf("license          %s\n", c->license);
	}
	sb_model_free(m);
	return 0;
}
