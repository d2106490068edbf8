/* perplexity.c - `seqboat perplexity`: how well a model predicts a text.
 * The token stream is scored in pieces of bounded size through one
 * state, so a whole book can be one stream: the memory used for scoring
 * does not grow with the text (the text and its ids are held, 4 bytes
 * per token). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "common.h"
#include "report.h"

static const char usage_text[] =
	"usage: seqboat perplexity [-m DIR] (-f FILE | --ids \"ID ID ...\") [--chunk N]\n"
	"                          [--json] [--act-bias X] [-t N]\n\n"
	"Scores a text with the model. The token stream is the beginning-of-sequence\n"
	"id (when the model has one), then the file's tokens. Without --chunk the\n"
	"whole stream is read by one state, which stays the same size however long\n"
	"the text is, and every token after the first is predicted. With --chunk N\n"
	"the stream is cut into chunks of N tokens (the last one may be shorter),\n"
	"each read from an empty state, and tokens 1..N-1 of each chunk are predicted.\n"
	"Prints the tokens scored, the mean negative log-likelihood (nats), the\n"
	"perplexity, bits per token and bits per byte (the total in bits over the\n"
	"file's size in bytes).\n\n"
	"  -m, --model DIR     model directory (default: the bundled model)\n"
	"  -f, --file FILE     the text ('-': standard input)\n"
	"      --ids IDS       token ids instead of a text (spaces or commas between);\n"
	"                      they are the whole stream as given: no beginning-of-\n"
	"                      sequence id is added, and bits per byte is not reported\n"
	"  -c, --chunk N       evaluate chunks of N tokens (N >= 2) from empty states\n"
	"      --json          print one JSON object instead of text\n"
	"      --act-bias X    shift the routers: positive = fewer activations\n"
	"  -t, --threads N     threads (default: all cores)\n"
	"  -h, --help          show this help\n";

enum { OPT_IDS = 256, OPT_JSON, OPT_ACT_BIAS };

/* Rows of logits per prefill call: at most 512, and at most 4 Mi floats. */
#define PIECE_ROWS 512
#define PIECE_FLOATS (4u << 20)

typedef struct ppl_totals {
	double nll;              /* nats, summed */
	uint64_t scored;
	uint64_t fed;            /* tokens read by a state */
	uint64_t chunks;
	double *activated;       /* (L) router activations, summed over chunks */
} ppl_totals;

/* -log softmax(row)[target], in double. */
static double token_nll(const float *row, size_t V, int32_t target)
{
	double mx = row[0];
	for (size_t v = 1; v < V; v++)
		mx = row[v] > mx ? row[v] : mx;
	double s = 0;
	for (size_t v = 0; v < V; v++)
		s += exp((double)row[v] - mx);
	return mx + log(s) - (double)row[target];
}

static int score(sb_ctx *ctx, sb_state *st, const int32_t *stream, size_t n, size_t chunk,
                 ppl_totals *tot, sb_error *err)
{
	const sb_config *c = sb_model_config(sb_ctx_model(ctx));
	const size_t V = (size_t)c->vocab_size, L = (size_t)c->layers;
	size_t rows = PIECE_FLOATS / V;
	rows = rows < 1 ? 1 : rows > PIECE_ROWS ? PIECE_ROWS : rows;
	float *logits = malloc(rows * V * sizeof *logits);
	if (!logits)
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory for %zu rows of logits", rows);
	cli_progress prog;
	cli_progress_start(&prog);
	/* The last token of each chunk is only a target: it is never read. */
	uint64_t to_feed = 0;
	for (size_t c0 = 0; c0 < n; c0 += chunk) {
		size_t len = n - c0 < chunk ? n - c0 : chunk;
		to_feed += len >= 2 ? len - 1 : 0;
	}
	int rc = 0;
	for (size_t c0 = 0; c0 < n && rc >= 0; c0 += chunk) {
		size_t len = n - c0 < chunk ? n - c0 : chunk;
		if (len < 2)
			continue;
		sb_state_reset(st);
		for (size_t p0 = 0; p0 + 1 < len; p0 += rows) {
			size_t np = len - 1 - p0 < rows ? len - 1 - p0 : rows;
			sb_outputs out = {.logits = logits};
			if ((rc = sb_prefill(ctx, st, stream + c0 + p0, np, &out, err)) < 0)
				break;
			for (size_t j = 0; j < np; j++)
				tot->nll += token_nll(logits + j * V, V, stream[c0 + p0 + j + 1]);
			tot->scored += np;
			tot->fed += np;
			char extra[64];
			snprintf(extra, sizeof extra, "ppl %.4f", exp(tot->nll / (double)tot->scored));
			cli_progress_update(&prog, "perplexity", tot->fed, to_feed, "tok", extra);
		}
		for (size_t l = 0; l < L; l++)
			tot->activated[l] += (double)sb_state_n_activated(st, (int)l);
		tot->chunks++;
	}
	cli_progress_clear(&prog);
	free(logits);
	return rc;
}

int cmd_perplexity(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'},
		{"file", required_argument, 0, 'f'},
		{"ids", required_argument, 0, OPT_IDS},
		{"chunk", required_argument, 0, 'c'},
		{"json", no_argument, 0, OPT_JSON},
		{"act-bias", required_argument, 0, OPT_ACT_BIAS},
		{"threads", required_argument, 0, 't'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	const char *dir = NULL, *file = NULL, *ids_arg = NULL;
	long chunk = 0;
	bool json = false;
	float act_bias = 0.0f;
	int threads = 0, o;
	while ((o = getopt_long(argc, argv, "m:f:c:t:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': dir = optarg; break;
		case 'f': file = optarg; break;
		case OPT_IDS: ids_arg = optarg; break;
		case 'c':
			if (!cli_parse_long("--chunk", optarg, 2, 1L << 40, &chunk))
				return CLI_EXIT_USAGE;
			break;
		case OPT_JSON: json = true; break;
		case OPT_ACT_BIAS:
			if (!cli_parse_act_bias(optarg, &act_bias))
				return CLI_EXIT_USAGE;
			break;
		case 't':
			if (!cli_parse_threads(optarg, &threads))
				return CLI_EXIT_USAGE;
			break;
		case 'h': fputs(usage_text, stdout); return 0;
		default: return cli_bad_option("perplexity", argv);
		}
	}
	if (cli_no_operands("perplexity", argc, argv))
		return CLI_EXIT_USAGE;
	if (!file == !ids_arg) {
		cli_error("perplexity: give exactly one of -f FILE and --ids (see 'seqboat perplexity --help')");
		return CLI_EXIT_USAGE;
	}

	sb_model *m = NULL;
	sb_tokenizer *tok = NULL;
	sb_ctx *ctx = NULL;
	sb_state *st = NULL;
	char *text = NULL;
	size_t n_bytes = 0, n = 0;
	int32_t *stream = NULL;
	json_t *jo = NULL;
	sb_error err = {0};
	ppl_totals tot = {0};
	int rc;
	if (ids_arg) {
		if ((rc = cli_parse_ids("--ids", ids_arg, &stream, &n)) ||
		    (rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO)))
			goto out;
	} else {
		if ((rc = cli_read_file(file, &text, &n_bytes)) ||
		    (rc = cli_load_model(dir, &m, &tok, SB_BYTES_AUTO)))
			goto out;
		if (sb_tokenizer_encode(tok, text, n_bytes, true, &stream, &n, &err) < 0) {
			sb_error_prefix(&err, file);
			rc = cli_fail(&err);
			goto out;
		}
		free(text);
		text = NULL;
	}
	const sb_config *c = sb_model_config(m);
	for (size_t i = 0; i < n; i++)
		if (stream[i] >= c->vocab_size) {
			cli_error("%s: token %zu is id %d, outside the model's vocabulary [0, %d)",
			          ids_arg ? "--ids" : file, i, (int)stream[i], c->vocab_size);
			rc = ids_arg ? CLI_EXIT_USAGE : CLI_EXIT_DATA;
			goto out;
		}
	if (n < 2) {
		cli_error("%s: %zu token%s: nothing to predict (at least 2 are needed)",
		          ids_arg ? "--ids" : file, n, n == 1 ? "" : "s");
		rc = CLI_EXIT_DATA;
		goto out;
	}
	const size_t L = (size_t)c->layers;
	if (!(tot.activated = calloc(L, sizeof *tot.activated))) {
		cli_error("out of memory");
		rc = CLI_EXIT_SOFTWARE;
		goto out;
	}
	if (!(ctx = sb_ctx_new(m, threads, &err)) || !(st = sb_state_new(m, &err))) {
		rc = cli_fail(&err);
		goto out;
	}
	sb_ctx_set_act_bias(ctx, act_bias);
	size_t chunk_len = chunk > 0 && (size_t)chunk < n ? (size_t)chunk : n;
	if (score(ctx, st, stream, n, chunk_len, &tot, &err) < 0) {
		rc = cli_fail(&err);
		goto out;
	}
	if (tot.scored == 0) {
		cli_error("perplexity: no token could be scored");
		rc = CLI_EXIT_DATA;
		goto out;
	}
	const double mean = tot.nll / (double)tot.scored;
	const double bits = tot.nll / log(2.0);
	const bool have_bytes = !ids_arg && n_bytes > 0;
	if (json) {
		json_t *act = json_array();
		jo = json_object();
		if (!act || !jo) {
			json_decref(act);
			cli_error("perplexity: out of memory formatting JSON");
			rc = CLI_EXIT_SOFTWARE;
			goto out;
		}
		for (size_t l = 0; l < L; l++)
			json_array_append_new(act, json_real(tot.activated[l] / (double)tot.fed));
		json_object_set_new(jo, "model_dir", json_string(sb_model_dir(m)));
		json_object_set_new(jo, "input", ids_arg ? json_string("--ids") : json_string(file));
		json_object_set_new(jo, "tokens", json_integer((json_int_t)n));
		json_object_set_new(jo, "chunk", chunk > 0 ? json_integer(chunk) : json_null());
		json_object_set_new(jo, "chunks", json_integer((json_int_t)tot.chunks));
		json_object_set_new(jo, "tokens_scored", json_integer((json_int_t)tot.scored));
		json_object_set_new(jo, "nll_sum", json_real(tot.nll));
		json_object_set_new(jo, "mean_nll", json_real(mean));
		json_object_set_new(jo, "perplexity", json_real(exp(mean)));
		json_object_set_new(jo, "bits_per_token", json_real(mean / log(2.0)));
		json_object_set_new(jo, "bytes", have_bytes ? json_integer((json_int_t)n_bytes) : json_null());
		json_object_set_new(jo, "bits_per_byte",
		                    have_bytes ? json_real(bits / (double)n_bytes) : json_null());
		json_object_set_new(jo, "act_bias", json_real(act_bias));
		json_object_set_new(jo, "act_rate", act);
		if (json_dumpf(jo, stdout, JSON_COMPACT) != 0) {
			cli_error("perplexity: cannot write JSON");
			rc = CLI_EXIT_IO;
			goto out;
		}
		putchar('\n');
	} else {
		printf("model            %s\n", sb_model_dir(m));
		printf("tokens           %zu%s\n", n,
		       ids_arg ? " (the ids as given)" : " (beginning of sequence + the text's tokens)");
		if (chunk > 0)
			printf("chunks           %llu of %ld tokens, each from an empty state\n",
			       (unsigned long long)tot.chunks, chunk);
		else
			printf("chunks           none: one stream through one state\n");
		printf("tokens scored    %llu\n", (unsigned long long)tot.scored);
		printf("mean nll         %.6f nats\n", mean);
		printf("perplexity       %.4f\n", exp(mean));
		printf("bits per token   %.6f\n", mean / log(2.0));
		if (have_bytes)
			printf("bits per byte    %.6f (%zu bytes)\n", bits / (double)n_bytes, n_bytes);
		printf("activation rate ");
		for (size_t l = 0; l < L; l++)
			printf(" %.3f", tot.activated[l] / (double)tot.fed);
		printf(" (per layer)\n");
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		cli_error("standard output: write error");
		rc = CLI_EXIT_IO;
	}
out:
	json_decref(jo);
	free(tot.activated);
	free(text);
	free(stream);
	sb_state_free(st);
	sb_ctx_free(ctx);
	sb_tokenizer_free(tok);
	sb_model_free(m);
	return rc;
}
