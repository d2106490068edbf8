/* gen.c - see gen.h. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gen.h"

static const char gen_help_fmt[] =
	"  -m, --model DIR          model directory (default: the bundled model)\n"
	"  -t, --threads N          compute threads (default and 0: all cores; more than\n"
	"                           the cores are lowered to their number, with a warning)\n"
	"      --device D           compute on D: cpu (default), or cuda / cuda:N where this\n"
	"                           build has the CUDA backend\n"
	"  -n, --max-tokens N       most tokens to generate; -1: until end of text\n"
	"                           (default %ld; also --n-predict, as llama.cpp)\n"
	"      --temp T             temperature; 0 = greedy (default 0.8)\n"
	"      --top-k K            keep the K most likely tokens; 0 = off (default 40)\n"
	"      --top-p P            keep the smallest set with mass P; 1 = off (default 0.95)\n"
	"      --min-p P            drop tokens below P x the best one's probability (default 0.05)\n"
	"      --repeat-penalty X   penalize recent tokens (llama.cpp style); 1 = off (default 1)\n"
	"      --repeat-last-n N    how many recent tokens the penalties see (default 64)\n"
	"      --presence-penalty X subtract X from recent tokens' logits (default 0)\n"
	"      --frequency-penalty X subtract X per occurrence (default 0)\n"
	"      --logit-bias ID=X    add X to token ID's logit (X may be -inf); repeatable;\n"
	"                           llama.cpp's ID+X / ID-X also work\n"
	"  -s, --seed N             random seed, 0 to 2^53-1; -1 = random (default: random)\n"
	"      --stop TEXT          stop when TEXT is generated (not printed); repeatable\n"
	"  -e, --escape             read \\n \\r \\t \\\\ \\' \\\" \\xHH in prompts, --stop and other\n"
	"                           texts given as flags, as llama.cpp does (the default)\n"
	"      --no-escape          take those texts literally\n"
	"      --act-bias B         router shift: positive = fewer attention activations\n"
	"                           (default 0)\n"
	"      --mem SIZE           memory for the states of sequences, snapshots and\n"
	"                           caches (bytes, or with K, M, G; default: 3/4 of RAM);\n"
	"                           a model whose one sequence does not fit is refused\n"
	"      --check              read every weight first and refuse a NaN or an\n"
	"                           infinity (loading checks only the small tensors)\n";

const char *cli_gen_help(long default_max_tokens)
{
	static char buf[sizeof gen_help_fmt + 32];
	snprintf(buf, sizeof buf, gen_help_fmt, default_max_tokens);
	return buf;
}

void cli_gen_init(cli_gen *g, long default_max_tokens)
{
	memset(g, 0, sizeof *g);
	g->max_tokens = default_max_tokens;
	g->sp = sb_sampler_default_params();
	g->escape = true;
}

void cli_gen_free(cli_gen *g)
{
	free(g->stops);
	free(g->bias_ids);
	free(g->bias_values);
	memset(g, 0, sizeof *g);
}

bool cli_flag_value(int argc, char **argv, int *i, const char *short_name,
                    const char *long_name, const char **value, int *status)
{
	const char *a = argv[*i];
	size_t ln = strlen(long_name);
	if (!strncmp(a, long_name, ln) && a[ln] == '=') {
		*value = a + ln + 1;
		return true;
	}
	if (strcmp(a, long_name) && (!short_name || strcmp(a, short_name)))
		return false;
	if (*i + 1 >= argc) {
		cli_error("%s: expected a value", a);
		*status = CLI_EXIT_USAGE;
		*value = NULL;
		return true;
	}
	*value = argv[++*i];
	return true;
}

static int push_stop(cli_gen *g, const char *s)
{
	if (!*s) {
		cli_error("--stop: expected a non-empty string");
		return -CLI_EXIT_USAGE;
	}
	const char **v = realloc(g->stops, (g->n_stops + 1) * sizeof *v);
	if (!v) {
		cli_error("out of memory");
		return -CLI_EXIT_SOFTWARE;
	}
	v[g->n_stops++] = s;
	g->stops = v;
	return 1;
}

/* "ID=VALUE", or llama.cpp's "ID+VALUE" / "ID-VALUE"; VALUE may be inf. */
static int push_bias(cli_gen *g, const char *s)
{
	char *end;
	errno = 0;
	long id = strtol(s, &end, 10);
	if (end == s || errno || id < 0 || id > INT32_MAX ||
	    (*end != '=' && *end != '+' && *end != '-')) {
		cli_error("--logit-bias: expected ID=VALUE (e.g. 15043=-inf or 15043=1.5), got '%s'", s);
		return -CLI_EXIT_USAGE;
	}
	const char *v = *end == '=' ? end + 1 : end;
	double x;
	if (!strcmp(v, "-inf") || !strcmp(v, "-infinity")) {
		x = -INFINITY;
	} else {
		char *vend;
		errno = 0;
		x = strtod(v, &vend);
		if (!*v || *vend || errno || !isfinite(x)) {
			cli_error("--logit-bias: expected a finite number or -inf after the id, got '%s'", s);
			return -CLI_EXIT_USAGE;
		}
	}
	int32_t *ids = realloc(g->bias_ids, (g->n_bias + 1) * sizeof *ids);
	if (!ids)
		goto nomem;
	g->bias_ids = ids;
	float *vals = realloc(g->bias_values, (g->n_bias + 1) * sizeof *vals);
	if (!vals)
		goto nomem;
	g->bias_values = vals;
	ids[g->n_bias] = (int32_t)id;
	vals[g->n_bias] = (float)x;
	g->n_bias++;
	g->sp.bias_ids = g->bias_ids;
	g->sp.bias_values = g->bias_values;
	g->sp.n_bias = g->n_bias;
	return 1;
nomem:
	cli_error("out of memory");
	return -CLI_EXIT_SOFTWARE;
}

/* "123", "64K", "512M", "8G" (powers of 1024) into bytes, at least 1. */
static bool parse_mem(const char *v, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	unsigned shift = 0;
	if (*end == 'K' || *end == 'k')
		shift = 10;
	else if (*end == 'M' || *end == 'm')
		shift = 20;
	else if (*end == 'G' || *end == 'g')
		shift = 30;
	else if (*end == 'T' || *end == 't')
		shift = 40;
	if (shift)
		end++;
	if (end == v || *end || errno || *v == '-' || x == 0 || x > (SIZE_MAX >> shift)) {
		cli_error("--mem: expected a size in bytes (with K, M, G or T), got '%s'", v);
		return false;
	}
	*out = (size_t)x << shift;
	return true;
}

size_t cli_gen_mem_limit(const cli_gen *g)
{
	if (g->mem)
		return g->mem;
	size_t ram = sb_mem_physical();
	return ram ? ram / 4 * 3 : SIZE_MAX;
}

int cli_gen_parse(cli_gen *g, int argc, char **argv, int *i)
{
	const char *v = NULL;
	int st = 0;
#define FLAG(s, l) cli_flag_value(argc, argv, i, s, l, &v, &st)
#define OK(expr) (st ? -st : ((expr) ? 1 : -CLI_EXIT_USAGE))
	if (!strcmp(argv[*i], "--check")) {
		g->check = true;
		return 1;
	}
	if (FLAG(NULL, "--mem")) {
		if (st)
			return -st;
		return parse_mem(v, &g->mem) ? 1 : -CLI_EXIT_USAGE;
	}
	if (FLAG("-m", "--model")) {
		g->model_dir = v;
		return OK(true);
	}
	if (FLAG("-t", "--threads"))
		return OK(cli_parse_threads(v, &g->threads));
	if (FLAG(NULL, "--device")) {
		g->device = v;
		return OK(true);
	}
	if (FLAG(NULL, "--act-bias"))
		return OK(cli_parse_float("--act-bias", v, -1e6, 1e6, &g->act_bias));
	if (FLAG("-n", "--n-predict") || FLAG(NULL, "--max-tokens"))
		return OK(cli_parse_long("--max-tokens", v, -1, INT_MAX, &g->max_tokens));
	if (FLAG(NULL, "--temp"))
		return OK(cli_parse_float("--temp", v, 0, 1e6, &g->sp.temp));
	if (FLAG(NULL, "--top-k"))
		return OK(cli_parse_int("--top-k", v, 0, INT_MAX, &g->sp.top_k));
	if (FLAG(NULL, "--top-p"))
		return OK(cli_parse_float("--top-p", v, 1e-9, 1, &g->sp.top_p));
	if (FLAG(NULL, "--min-p"))
		return OK(cli_parse_float("--min-p", v, 0, 1, &g->sp.min_p));
	if (FLAG(NULL, "--repeat-penalty"))
		return OK(cli_parse_float("--repeat-penalty", v, 1e-6, 1e6, &g->sp.repeat_penalty));
	if (FLAG(NULL, "--repeat-last-n"))
		return OK(cli_parse_int("--repeat-last-n", v, 0, 1 << 20, &g->sp.repeat_last_n));
	if (FLAG(NULL, "--presence-penalty"))
		return OK(cli_parse_float("--presence-penalty", v, -1e6, 1e6, &g->sp.presence_penalty));
	if (FLAG(NULL, "--frequency-penalty"))
		return OK(cli_parse_float("--frequency-penalty", v, -1e6, 1e6, &g->sp.frequency_penalty));
	if (FLAG("-s", "--seed")) {
		if (st)
			return -st;
		if (!strcmp(v, "-1")) {
			g->seed_set = false;
			return 1;
		}
		char *end;
		errno = 0;
		unsigned long long x = *v == '-' ? 0 : strtoull(v, &end, 10);
		if (*v == '-' || !*v || *end || errno || x > CLI_SEED_MAX) {
			/* llama.cpp's -s is the seed; a text here was meant as a
			 * system prompt. */
			cli_error("--seed: expected an integer from 0 to %llu or -1 (random), got '%s'%s",
			          (unsigned long long)CLI_SEED_MAX, v,
			          strcmp(argv[*i - 1], "-s") ? ""
			                                     : " (-s is the seed, as in llama.cpp; a system "
			                                       "prompt is --system TEXT or -sys TEXT)");
			return -CLI_EXIT_USAGE;
		}
		g->seed_set = true;
		g->sp.seed = x;
		return 1;
	}
	if (!strcmp(argv[*i], "-e") || !strcmp(argv[*i], "--escape")) {
		g->escape = true;
		return 1;
	}
	if (!strcmp(argv[*i], "--no-escape")) {
		g->escape = false;
		return 1;
	}
	if (FLAG(NULL, "--stop"))
		return st ? -st : push_stop(g, v);
	if (FLAG(NULL, "--logit-bias"))
		return st ? -st : push_bias(g, v);
#undef FLAG
#undef OK
	return 0;
}

int cli_gen_open(const cli_gen *g, sb_model **model, sb_tokenizer **tok,
                 sb_ctx **ctx)
{
	sb_error err = {0};
	*ctx = NULL;
	int rc = cli_load_model(g->model_dir, model, tok, SB_BYTES_AUTO);
	if (rc)
		return rc;
	/* One sequence's state at least must fit the memory limit. */
	size_t fit;
	if (sb_state_budget(*model, cli_gen_mem_limit(g), g->mem ? "--mem" : "--mem default, 3/4 of RAM",
	                    1, 1, &fit, &err) < 0) {
		rc = cli_fail(&err);
		goto fail;
	}
	if (g->check && sb_model_check_weights(*model, &err) < 0) {
		rc = cli_fail(&err);
		goto fail;
	}
	/* Checks the sampler flags against the vocabulary once, up front. */
	sb_sampler *probe = sb_sampler_new(&g->sp, sb_model_config(*model)->vocab_size, &err);
	if (!probe) {
		rc = cli_fail(&err);
		goto fail;
	}
	sb_sampler_free(probe);
	sb_ctx_params cp = sb_ctx_default_params();
	cp.n_threads = g->threads;
	cp.act_bias = g->act_bias;
	cp.device = g->device;
	*ctx = sb_ctx_new(*model, &cp, &err);
	if (!*ctx) {
		rc = cli_fail(&err);
		goto fail;
	}
	return 0;
fail:
	sb_tokenizer_free(*tok);
	sb_model_free(*model);
	*tok = NULL;
	*model = NULL;
	return rc;
}

int32_t cli_gen_eos(const sb_model *m, const sb_tokenizer *tok)
{
	int e = tok ? sb_tokenizer_eos(tok) : -1;
	if (e < 0)
		e = sb_model_config(m)->eos_id;
	return e;
}

static uint64_t mix64(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

uint64_t cli_random_seed(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return mix64((uint64_t)ts.tv_sec * 1000000007ULL ^ (uint64_t)ts.tv_nsec ^
	             ((uint64_t)getpid() << 32)) & CLI_SEED_MAX;
}

uint64_t cli_seed_derive(uint64_t base, const char *key, size_t len)
{
	/* FNV-1a over the key, then two rounds of mixing with the base. */
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)key[i];
		h *= 0x100000001b3ULL;
	}
	return mix64(mix64(base) ^ h);
}

double cli_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_write_escaped(FILE *f, cli_escaper *e, const char *s, size_t len)
{
	size_t run = 0; /* start of the bytes not yet written */
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (e->pending_c2) {
			e->pending_c2 = false;
			if (c >= 0x80 && c <= 0x9f)
				fprintf(f, "\\u%04x", c);
			else
				fputc(0xc2, f);
			if (c >= 0x80 && c <= 0x9f) {
				run = i + 1;
				continue;
			}
		}
		bool ctl = (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f;
		if (ctl || c == 0xc2) {
			fwrite(s + run, 1, i - run, f);
			run = i + 1;
			if (ctl)
				fprintf(f, "\\x%02x", c);
			else
				e->pending_c2 = true;
		}
	}
	fwrite(s + run, 1, len - run, f);
}

void cli_escaper_finish(FILE *f, cli_escaper *e)
{
	if (e->pending_c2)
		fputc(0xc2, f);
	e->pending_c2 = false;
}

/* The value of one hex digit, or -1. */
static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

size_t cli_unescape(char *s)
{
	char *o = s;
	for (const char *p = s; *p; p++) {
		if (*p != '\\' || !p[1]) {
			*o++ = *p;
			continue;
		}
		char c = *++p;
		switch (c) {
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case 't': *o++ = '\t'; break;
		case '\\': *o++ = '\\'; break;
		case '\'': *o++ = '\''; break;
		case '"': *o++ = '"'; break;
		case 'x':
			/* \xHH, one or two digits; \x00 would end the string, so
			 * it stays as written. */
			if (hexval(p[1]) >= 0) {
				int v = hexval(p[1]);
				size_t k = 1;
				if (hexval(p[2]) >= 0) {
					v = v * 16 + hexval(p[2]);
					k = 2;
				}
				if (v) {
					*o++ = (char)v;
					p += k;
					break;
				}
			}
			/* fall through */
		default:
			/* an unknown sequence stays as it was written */
			*o++ = '\\';
			*o++ = c;
		}
	}
	*o = 0;
	return (size_t)(o - s);
}

int cli_gen_finish(cli_gen *g)
{
	if (!g->escape)
		return 0;
	for (size_t i = 0; i < g->n_stops; i++) {
		/* The stops point into argv, which may be written. */
		char *s = (char *)g->stops[i];
		cli_unescape(s);
		if (!*s) {
			cli_error("--stop: expected a non-empty string");
			return CLI_EXIT_USAGE;
		}
	}
	return 0;
}

uint64_t cli_item_seed(uint64_t base, const char *key, size_t len, bool single)
{
	return single ? base : cli_seed_derive(base, key, len) & CLI_SEED_MAX;
}
