/* perplexity.c - `seqboat perplexity`: how well a model predicts a text.
 * The token stream is scored in pieces of bounded size through one
 * state, so a whole book can be one stream: the memory used for scoring
 * does not grow with the text (the text and its ids are held, 4 bytes
 * per token). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "common.h"
#include "divergence.h"
#include "report.h"

static const char usage_text[] =
	"usage: seqboat perplexity [-m DIR] (-f FILE | --ids \"ID ID ...\") [--chunk N]\n"
	"                          [--json] [--act-bias X] [-t N] [--device D]\n"
	"                          [--kl-divergence-base FILE [--kl-divergence]]\n\n"
	"Scores a text with the model. The token stream is the beginning-of-sequence\n"
	"id (when the model has one), then the file's tokens. Without --chunk the\n"
	"whole stream is read by one state, which stays the same size however long\n"
	"the text is, and every token after the first is predicted. With --chunk N\n"
	"the stream is cut into chunks of N tokens (the last one may be shorter),\n"
	"each read from an empty state, and tokens 1..N-1 of each chunk are predicted.\n"
	"Prints the tokens scored, the mean negative log-likelihood (nats), the\n"
	"perplexity, bits per token and bits per byte (the total in bits over the\n"
	"file's size in bytes). The +/- after the mean NLL and the perplexity is one\n"
	"standard error of the estimate (the tokens' NLL standard deviation over\n"
	"sqrt(tokens scored); for the perplexity, the NLL's error times the\n"
	"perplexity), as llama-perplexity reports it. With --chunk the running\n"
	"perplexity after each chunk follows ([1]...,[2]...); --json lists every\n"
	"chunk's figures in \"chunk_results\".\n\n"
	"Comparing two models (a quantized copy with the F32 original), as\n"
	"llama-perplexity does:\n"
	"  seqboat perplexity -m F32-MODEL -f T --kl-divergence-base base.kld\n"
	"  seqboat perplexity -m Q8-MODEL  -f T --kl-divergence-base base.kld --kl-divergence\n"
	"The first run also writes the model's log-probabilities at every scored\n"
	"position to the file (4 x vocabulary bytes per position); the second reads\n"
	"them and adds the KL divergence of its predictions from them (mean +/- its\n"
	"error, maximum, percentiles), delta-p (the change of the right token's\n"
	"probability) and how often both models put the same token first. Both runs\n"
	"need the same text, tokenizer and --chunk.\n\n"
	"A terminal shows progress while tokenizing and scoring; Ctrl-C stops and\n"
	"reports what was scored so far (exit status 130).\n\n"
	"  -m, --model DIR     model directory (default: the bundled model)\n"
	"  -f, --file FILE     the text ('-': standard input)\n"
	"      --ids IDS       token ids instead of a text (spaces or commas between);\n"
	"                      they are the whole stream as given: no beginning-of-\n"
	"                      sequence id is added, and bits per byte is not reported\n"
	"  -c, --chunk N       evaluate chunks of N tokens (N >= 2) from empty states\n"
	"                      (default: no chunks, one stream)\n"
	"      --json          print one JSON object instead of text\n"
	"      --kl-divergence-base FILE\n"
	"                      the base logits file: written, or with --kl-divergence read\n"
	"      --kl-divergence compare with the base logits of --kl-divergence-base\n"
	"      --act-bias X    shift the routers: positive = fewer activations (default 0)\n"
	"  -t, --threads N     threads (default and 0: all cores; more than the cores\n"
	"                      are lowered to their number, with a warning)\n"
	"      --device D      compute on D: cpu (default), or cuda / cuda:N where\n"
	"                      this build has the CUDA backend\n"
	"  -h, --help          show this help\n";

enum { OPT_IDS = 256, OPT_JSON, OPT_ACT_BIAS, OPT_KLD_BASE, OPT_KLD, OPT_DEVICE };

/* Rows of logits per prefill call: at most 512, and at most 4 Mi floats. */
#define PIECE_ROWS 512
#define PIECE_FLOATS (4u << 20)

/* The one global the conventions allow: a SIGINT arrived. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

typedef struct ppl_chunk {
	uint64_t scored;
	double nll;
} ppl_chunk;

typedef struct ppl_totals {
	double nll;              /* nats, summed */
	double nll2;             /* squares of the tokens' NLL, summed */
	uint64_t scored;
	uint64_t fed;            /* tokens read by a state */
	uint64_t chunks;         /* chunks scored completely */
	uint64_t to_score;
	double *activated;       /* (L) router activations, summed over chunks */
	ppl_chunk *chunk;        /* (chunks) */
} ppl_totals;

/* What to do with the log-probabilities besides scoring. */
typedef struct ppl_kld {
	cli_kld_base base;
	bool writing, comparing;
	cli_kld stats;
} ppl_kld;

/* row := log softmax(row) in place (in double); returns -row[target]. */
static double log_softmax(float *row, size_t V, int32_t target)
{
	double mx = row[0];
	for (size_t v = 1; v < V; v++)
		mx = row[v] > mx ? row[v] : mx;
	double s = 0;
	for (size_t v = 0; v < V; v++)
		s += exp((double)row[v] - mx);
	const double lse = mx + log(s);
	const double nll = lse - (double)row[target];
	for (size_t v = 0; v < V; v++)
		row[v] = (float)((double)row[v] - lse);
	return nll;
}

/* Returns 0, 1 when interrupted, or a negative library error (in err)
 * or, from the base file, a positive exit status in *status. */
static int score(sb_ctx *ctx, sb_state *st, const int32_t *stream, size_t n, size_t chunk,
                 ppl_totals *tot, ppl_kld *kld, int *status, sb_error *err)
{
	const sb_config *c = sb_model_config(sb_ctx_model(ctx));
	const size_t V = (size_t)c->vocab_size, L = (size_t)c->layers;
	size_t rows = PIECE_FLOATS / V;
	rows = rows < 1 ? 1 : rows > PIECE_ROWS ? PIECE_ROWS : rows;
	size_t n_chunks = (n + chunk - 1) / chunk;
	float *logits = malloc(rows * V * sizeof *logits);
	tot->chunk = calloc(n_chunks, sizeof *tot->chunk);
	if (!logits || !tot->chunk) {
		free(logits);
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory for %zu rows of logits", rows);
	}
	cli_progress prog;
	cli_progress_start(&prog);
	/* The last token of each chunk is only a target: it is never read. */
	for (size_t c0 = 0; c0 < n; c0 += chunk) {
		size_t len = n - c0 < chunk ? n - c0 : chunk;
		tot->to_score += len >= 2 ? len - 1 : 0;
	}
	int rc = 0;
	for (size_t c0 = 0; c0 < n && rc == 0; c0 += chunk) {
		size_t len = n - c0 < chunk ? n - c0 : chunk;
		if (len < 2)
			continue;
		ppl_chunk *ch = &tot->chunk[tot->chunks];
		sb_state_reset(st);
		for (size_t p0 = 0; p0 + 1 < len && rc == 0; p0 += rows) {
			if (interrupted) {
				rc = 1;
				break;
			}
			size_t np = len - 1 - p0 < rows ? len - 1 - p0 : rows;
			sb_outputs out = {.logits = logits};
			if ((rc = sb_prefill(ctx, st, stream + c0 + p0, np, &out, err)) < 0)
				break;
			for (size_t j = 0; j < np && rc == 0; j++) {
				float *row = logits + j * V;
				int32_t target = stream[c0 + p0 + j + 1];
				double nll = log_softmax(row, V, target);
				if (kld->writing && (*status = cli_kld_base_write(&kld->base, row)))
					rc = 2;
				else if (kld->comparing && (*status = cli_kld_base_read(&kld->base)))
					rc = 2;
				else if (kld->comparing && !cli_kld_add(&kld->stats, row, kld->base.row, V, target))
					rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory for the divergences");
				tot->nll += nll;
				tot->nll2 += nll * nll;
				ch->nll += nll;
			}
			if (rc)
				break;
			tot->scored += np;
			tot->fed += np;
			ch->scored += np;
			char extra[64];
			snprintf(extra, sizeof extra, "ppl %.4f", exp(tot->nll / (double)tot->scored));
			cli_progress_update(&prog, "perplexity", tot->fed, tot->to_score, "tok", extra);
		}
		if (rc)
			break;
		for (size_t l = 0; l < L; l++)
			tot->activated[l] += (double)sb_state_n_activated(st, (int)l);
		tot->chunks++;
	}
	cli_progress_clear(&prog);
	free(logits);
	return rc == 2 ? 0 : rc;
}

/* Tokenizing a long text is one call that can take many seconds: it runs
 * on a thread of its own while this one shows that it is under way and
 * watches for Ctrl-C. */
typedef struct tok_job {
	const sb_tokenizer *tok;
	const char *text;
	size_t len;
	int32_t *ids;
	size_t n;
	int rc;
	sb_error err;
	atomic_bool done;
} tok_job;

static void *tok_main(void *arg)
{
	tok_job *j = arg;
	j->rc = sb_tokenizer_encode(j->tok, j->text, j->len, true, &j->ids, &j->n, &j->err);
	atomic_store(&j->done, true);
	return NULL;
}

static int tokenize_text(const sb_tokenizer *tok, const char *file, const char *text,
                         size_t len, int32_t **ids, size_t *n)
{
	tok_job j = {.tok = tok, .text = text, .len = len};
	atomic_init(&j.done, false);
	pthread_t th;
	if (pthread_create(&th, NULL, tok_main, &j) != 0) {
		tok_main(&j);
	} else {
		cli_progress prog;
		cli_progress_start(&prog);
		while (!atomic_load(&j.done)) {
			if (interrupted) {
				cli_progress_clear(&prog);
				cli_error("perplexity: interrupted while tokenizing %s (%.1f MiB, after %.1f s): "
				          "nothing was scored", file, (double)len / (1024.0 * 1024),
				          cli_progress_seconds(&prog));
				/* The tokenizer cannot be stopped halfway and still
				 * reads the text: leave without tearing anything down
				 * under it. */
				fflush(stdout);
				_exit(CLI_EXIT_INTERRUPTED);
			}
			char note[128];
			snprintf(note, sizeof note, "perplexity: tokenizing %s (%.1f MiB, %.0f s)", file,
			         (double)len / (1024.0 * 1024), cli_progress_seconds(&prog));
			cli_progress_note(&prog, note);
			struct timespec ts = {0, 20 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		pthread_join(th, NULL);
		cli_progress_clear(&prog);
	}
	if (j.rc < 0) {
		sb_error_prefix(&j.err, file);
		return cli_fail(&j.err);
	}
	*ids = j.ids;
	*n = j.n;
	return 0;
}

static json_t *chunk_results(const ppl_totals *tot)
{
	json_t *a = json_array();
	double nll = 0;
	uint64_t scored = 0;
	for (uint64_t i = 0; a && i < tot->chunks; i++) {
		const ppl_chunk *c = &tot->chunk[i];
		nll += c->nll;
		scored += c->scored;
		json_t *o = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f}", "chunk", (json_int_t)i + 1,
		                      "tokens_scored", (json_int_t)c->scored, "nll_sum", c->nll,
		                      "mean_nll", c->nll / (double)c->scored,
		                      "perplexity", exp(c->nll / (double)c->scored),
		                      "running_perplexity", exp(nll / (double)scored));
		if (!o || json_array_append_new(a, o)) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
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
		{"device", required_argument, 0, OPT_DEVICE},
		{"kl-divergence-base", required_argument, 0, OPT_KLD_BASE},
		{"kl-divergence", no_argument, 0, OPT_KLD},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	const char *dir = NULL, *file = NULL, *ids_arg = NULL, *kld_path = NULL;
	long chunk = 0;
	bool json = false, kld_compare = false;
	float act_bias = 0.0f;
	int threads = 0, o;
	const char *device = NULL;
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
		case OPT_KLD_BASE: kld_path = optarg; break;
		case OPT_KLD: kld_compare = true; break;
		case OPT_DEVICE: device = optarg; break;
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
	if (kld_compare && !kld_path) {
		cli_error("perplexity: --kl-divergence needs --kl-divergence-base FILE (the base "
		          "model's logits, written by a run with --kl-divergence-base alone)");
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
	ppl_kld kld = {0};
	struct sigaction sa = {0}, old_sa;
	bool handler = false;
	int rc;
	sa.sa_handler = on_sigint;
	sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C ends the process */
	sigemptyset(&sa.sa_mask);
	handler = sigaction(SIGINT, &sa, &old_sa) == 0;
	if (ids_arg) {
		if ((rc = cli_parse_ids("--ids", ids_arg, &stream, &n)) ||
		    (rc = cli_load_model(dir, &m, NULL, SB_BYTES_AUTO)))
			goto out;
	} else {
		if ((rc = cli_read_file(file, CLI_LIMIT_TEXT, "a text file", &text, &n_bytes)) ||
		    (rc = cli_load_model(dir, &m, &tok, SB_BYTES_AUTO)))
			goto out;
		if ((rc = tokenize_text(tok, file, text, n_bytes, &stream, &n)))
			goto out;
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
	const size_t L = (size_t)c->layers, V = (size_t)c->vocab_size;
	if (!(tot.activated = calloc(L, sizeof *tot.activated))) {
		cli_error("out of memory");
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
	size_t chunk_len = chunk > 0 && (size_t)chunk < n ? (size_t)chunk : n;
	if (kld_path) {
		kld.comparing = kld_compare;
		kld.writing = !kld_compare;
		rc = kld_compare ? cli_kld_base_open(&kld.base, kld_path, V, stream, n, chunk_len)
		                 : cli_kld_base_create(&kld.base, kld_path, V, stream, n, chunk_len);
		if (rc)
			goto out;
	}
	int status = 0;
	int sc = score(ctx, st, stream, n, chunk_len, &tot, &kld, &status, &err);
	if (sc < 0) {
		rc = cli_fail(&err);
		goto out;
	}
	if (status) {
		rc = status;
		goto out;
	}
	if (sc == 1) {
		double mean, se;
		cli_mean_se(tot.nll, tot.nll2, (double)tot.scored, &mean, &se);
		if (tot.scored)
			cli_error("perplexity: interrupted after scoring %llu of %llu tokens (%llu "
			          "chunk%s complete): perplexity so far %.4f +/- %.4f, mean nll %.6f nats%s",
			          (unsigned long long)tot.scored, (unsigned long long)tot.to_score,
			          (unsigned long long)tot.chunks, tot.chunks == 1 ? "" : "s", exp(mean),
			          exp(mean) * se, mean, kld.writing ? "; the base logits file was not written" : "");
		else
			cli_error("perplexity: interrupted before the first token was scored");
		rc = CLI_EXIT_INTERRUPTED;
		goto out;
	}
	if (tot.scored == 0) {
		cli_error("perplexity: no token could be scored");
		rc = CLI_EXIT_DATA;
		goto out;
	}
	if (kld.writing) {
		if ((rc = cli_kld_base_commit(&kld.base)))
			goto out;
		fprintf(stderr, "perplexity: wrote the log-probabilities of %llu positions to %s\n",
		        (unsigned long long)tot.scored, kld_path);
	}
	double mean, se;
	cli_mean_se(tot.nll, tot.nll2, (double)tot.scored, &mean, &se);
	const double bits = tot.nll / log(2.0);
	const bool have_bytes = !ids_arg && n_bytes > 0;
	if (json) {
		json_t *act = json_array(), *chunks = chunk_results(&tot);
		json_t *kj = kld.comparing ? cli_kld_json(&kld.stats) : NULL;
		jo = json_object();
		if (!act || !jo || !chunks || (kld.comparing && !kj)) {
			json_decref(act);
			json_decref(chunks);
			json_decref(kj);
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
		json_object_set_new(jo, "mean_nll_uncertainty", json_real(se));
		json_object_set_new(jo, "perplexity", json_real(exp(mean)));
		json_object_set_new(jo, "perplexity_uncertainty", json_real(exp(mean) * se));
		json_object_set_new(jo, "bits_per_token", json_real(mean / log(2.0)));
		json_object_set_new(jo, "bytes", have_bytes ? json_integer((json_int_t)n_bytes) : json_null());
		json_object_set_new(jo, "bits_per_byte",
		                    have_bytes ? json_real(bits / (double)n_bytes) : json_null());
		json_object_set_new(jo, "act_bias", json_real(act_bias));
		json_object_set_new(jo, "act_rate", act);
		json_object_set_new(jo, "chunk_results", chunks);
		if (kj) {
			json_object_set_new(jo, "kl_divergence_base", json_string(kld_path));
			json_object_set_new(jo, "kl_divergence", kj);
		}
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
		printf("mean nll         %.6f +/- %.6f nats\n", mean, se);
		printf("perplexity       %.4f +/- %.4f\n", exp(mean), exp(mean) * se);
		printf("bits per token   %.6f\n", mean / log(2.0));
		if (have_bytes)
			printf("bits per byte    %.6f (%zu bytes)\n", bits / (double)n_bytes, n_bytes);
		printf("activation rate ");
		for (size_t l = 0; l < L; l++)
			printf(" %.3f", tot.activated[l] / (double)tot.fed);
		printf(" (per layer)\n");
		if (chunk > 0) {
			/* llama-perplexity's running estimate after each chunk */
			printf("running ppl      ");
			double rn = 0;
			uint64_t rs = 0;
			for (uint64_t i = 0; i < tot.chunks; i++) {
				rn += tot.chunk[i].nll;
				rs += tot.chunk[i].scored;
				printf("%s[%llu]%.4f", i ? "," : "", (unsigned long long)i + 1,
				       exp(rn / (double)rs));
			}
			putchar('\n');
		}
		if (kld.comparing) {
			printf("\n");
			cli_kld_print(stdout, &kld.stats);
		}
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		cli_error("standard output: write error");
		rc = CLI_EXIT_IO;
	}
out:
	if (handler)
		sigaction(SIGINT, &old_sa, NULL);
	cli_kld_base_close(&kld.base);
	cli_kld_free(&kld.stats);
	json_decref(jo);
	free(tot.activated);
	free(tot.chunk);
	free(text);
	free(stream);
	sb_state_free(st);
	sb_ctx_free(ctx);
	sb_tokenizer_free(tok);
	sb_model_free(m);
	return rc;
}
