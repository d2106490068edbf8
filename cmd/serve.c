/* serve.c - `seqboat serve`: an OpenAI-compatible HTTP server. Flags,
 * startup, signals and draining; see serve.h for the other files.
 *
 * The listening socket opens before the model loads, so /health can say
 * 503 until it is ready. SIGTERM (or SIGINT) stops accepting connections,
 * lets the requests in flight finish (at most --timeout seconds), then
 * exits 0; a second signal cancels what is left at once. */
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "gen.h"
#include "serve.h"
#include "serve_log.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: seqboat serve [options]\n\n"
	        "An OpenAI-compatible HTTP server: POST /v1/completions and\n"
	        "/v1/chat/completions (streaming with \"stream\": true), GET /v1/models,\n"
	        "/health, /metrics (Prometheus), POST /tokenize and /detokenize.\n"
	        "Concurrent requests decode together; after each request its state is\n"
	        "cached, so the next turn of a conversation reads only its new tokens.\n\n"
	        "options:\n"
	        "      --host HOST          address to listen on (default 127.0.0.1)\n"
	        "      --port N             port (default 8080; 0: any free port, logged)\n"
	        "      --parallel N         sequences decoded together (default 4)\n"
	        "      --queue N            requests that may wait for a slot (default 16);\n"
	        "                           beyond that: 503 with Retry-After\n"
	        "      --cache-bytes N      state cache bound, bytes (K, M, G suffixes;\n"
	        "                           default 32 states' worth, within --mem; 0: no cache)\n"
	        "      --cache-dir DIR      keep cached states in DIR across restarts\n"
	        "      --api-key KEY        require 'Authorization: Bearer KEY' (or set\n"
	        "                           $SEQBOAT_API_KEY); /health stays open\n"
	        "      --timeout S          seconds a request may take, queue included\n"
	        "                           (default 600); then 504\n"
	        "      --max-body N         largest request body, bytes (default 4M); then 413\n"
	        "      --max-connections N  open connections at most (default 256)\n"
	        "      --alias NAME         the model id clients use (default: the model's name)\n"
	        "      --load-delay S       wait S seconds before loading (for testing /health)\n"
	        "  -h, --help               this text\n\n"
	        "Sampling defaults for requests that do not set them:\n%s\n"
	        "(-n is the default max_tokens, 256; --stop strings apply to every request.)\n",
	        cli_gen_help(256));
}

/* "123", "64K", "512M", "2G" (powers of 1024). */
static bool parse_bytes(const char *flag, const char *v, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	unsigned long long mul = 1;
	if (*end == 'K' || *end == 'k')
		mul = 1ULL << 10;
	else if (*end == 'M' || *end == 'm')
		mul = 1ULL << 20;
	else if (*end == 'G' || *end == 'g')
		mul = 1ULL << 30;
	if (mul != 1)
		end++;
	if (end == v || *end || errno || v[0] == '-' || x > SIZE_MAX / mul) {
		cli_error("%s: expected a byte count such as 1048576, 64K, 512M or 2G, got '%s'", flag, v);
		return false;
	}
	*out = (size_t)(x * mul);
	return true;
}

static int parse_flags(serve_opts *o, cli_gen *g, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		int st = 0;
		long n;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return -1;
		}
		int k = cli_gen_parse(g, argc, argv, &i);
		if (k < 0)
			return -k;
		if (k > 0)
			continue;
#define FLAG(name) cli_flag_value(argc, argv, &i, NULL, name, &v, &st)
		if (FLAG("--host")) {
			if (st)
				return st;
			o->host = v;
		} else if (FLAG("--port")) {
			if (st || !cli_parse_long("--port", v, 0, 65535, &n))
				return CLI_EXIT_USAGE;
			o->port = (int)n;
		} else if (FLAG("--parallel")) {
			if (st || !cli_parse_long("--parallel", v, 1, 256, &n))
				return CLI_EXIT_USAGE;
			o->parallel = (int)n;
		} else if (FLAG("--queue")) {
			if (st || !cli_parse_long("--queue", v, 0, 100000, &n))
				return CLI_EXIT_USAGE;
			o->queue = (int)n;
		} else if (FLAG("--cache-bytes")) {
			if (st || !parse_bytes("--cache-bytes", v, &o->cache_bytes))
				return CLI_EXIT_USAGE;
			if (!o->cache_bytes)
				o->cache_bytes = 1; /* nothing fits: no cache */
		} else if (FLAG("--cache-dir")) {
			if (st)
				return st;
			o->cache_dir = v;
		} else if (FLAG("--api-key")) {
			if (st)
				return st;
			if (!*v) {
				cli_error("--api-key: expected a non-empty key");
				return CLI_EXIT_USAGE;
			}
			o->api_key = v;
		} else if (FLAG("--timeout")) {
			float t;
			if (st || !cli_parse_float("--timeout", v, 0.001, 86400, &t))
				return CLI_EXIT_USAGE;
			o->timeout_s = t;
		} else if (FLAG("--max-body")) {
			if (st || !parse_bytes("--max-body", v, &o->max_body))
				return CLI_EXIT_USAGE;
			if (o->max_body < 64) {
				cli_error("--max-body: expected at least 64 bytes");
				return CLI_EXIT_USAGE;
			}
		} else if (FLAG("--max-connections")) {
			if (st || !cli_parse_long("--max-connections", v, 1, 10000, &n))
				return CLI_EXIT_USAGE;
			o->max_connections = (int)n;
		} else if (FLAG("--alias")) {
			if (st)
				return st;
			if (!*v || strlen(v) > 200) {
				cli_error("--alias: expected a name of 1 to 200 bytes");
				return CLI_EXIT_USAGE;
			}
			o->alias = v;
		} else if (FLAG("--load-delay")) {
			float t;
			if (st || !cli_parse_float("--load-delay", v, 0, 3600, &t))
				return CLI_EXIT_USAGE;
			o->load_delay_s = t;
		} else {
			if (st)
				return st;
			cli_error("serve: unknown option '%s' (see 'seqboat serve --help')", a);
			return CLI_EXIT_USAGE;
		}
#undef FLAG
	}
	return 0;
}

static void set_model_id(serve_server *s)
{
	const sb_config *cfg = sb_model_config(s->m);
	if (s->o.alias) {
		snprintf(s->model_id, sizeof s->model_id, "%s", s->o.alias);
	} else if (cfg->name[0]) {
		snprintf(s->model_id, sizeof s->model_id, "%.255s", cfg->name);
	} else {
		char dir[4096];
		snprintf(dir, sizeof dir, "%s", sb_model_dir(s->m));
		size_t l = strlen(dir);
		while (l > 1 && dir[l - 1] == '/')
			dir[--l] = 0;
		snprintf(s->model_id, sizeof s->model_id, "%.255s", basename(dir));
	}
}

/* The one global the conventions allow: the signal that came. Threads
 * started before main (OpenBLAS starts its own) do not block SIGTERM, so
 * a signal may land on one of them: the handler records it there, and the
 * main thread, which otherwise takes the signal with sigtimedwait, looks
 * at it every 100 ms. */
static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

/* Sleeps up to `seconds`, returning early with the signal if one comes. */
static int wait_signal(const sigset_t *set, double seconds)
{
	double until = cli_now() + seconds;
	for (;;) {
		if (got_signal) {
			int sig = got_signal;
			got_signal = 0;
			return sig;
		}
		double left = until - cli_now();
		if (left <= 0)
			return 0;
		if (left > 0.1)
			left = 0.1;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(left * 1e9)};
		int sig = sigtimedwait(set, NULL, &ts);
		if (sig > 0)
			return sig;
	}
}

int cmd_serve(int argc, char **argv)
{
	serve_server *s = calloc(1, sizeof *s);
	if (!s) {
		cli_error("out of memory");
		return CLI_EXIT_SOFTWARE;
	}
	cli_gen g;
	cli_gen_init(&g, 256);
	serve_opts *o = &s->o;
	o->host = "127.0.0.1";
	o->port = 8080;
	o->parallel = 4;
	o->queue = 16;
	o->timeout_s = 600;
	o->max_body = 4u << 20;
	o->max_connections = 256;
	o->api_key = getenv("SEQBOAT_API_KEY");
	if (o->api_key && !*o->api_key)
		o->api_key = NULL;
	serve_metrics_init(&s->met);
	pthread_mutex_init(&s->qmu, NULL);
	int rc = parse_flags(o, &g, argc, argv);
	if (rc < 0) {
		rc = 0; /* --help */
		goto done;
	}
	if (rc)
		goto done;
	o->model_dir = g.model_dir;
	o->threads = g.threads;
	o->max_tokens = g.max_tokens;
	o->sp = g.sp;
	o->seed_set = g.seed_set;
	o->stops = g.stops;
	o->n_stops = g.n_stops;
	if (g.n_stops > 8) {
		cli_error("--stop: at most 8 for the server (requests add their own)");
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	s->created = (long)time(NULL);

	/* SIGTERM and SIGINT are taken by sigwait in this thread only: every
	 * thread started from here on inherits the mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((rc = serve_http_start(s)))
		goto done;
	serve_log("listening on http://%s:%d (pid %ld)", o->host, s->bound_port, (long)getpid());
	if (o->load_delay_s > 0 && wait_signal(&sigs, o->load_delay_s)) {
		serve_log("interrupted while loading");
		goto done;
	}

	double t0 = cli_now();
	if ((rc = cli_gen_open(&g, &s->m, &s->tok, &s->ctx)))
		goto done;
	s->V = sb_model_config(s->m)->vocab_size;
	s->eos = cli_gen_eos(s->m, s->tok);
	s->fingerprint = sb_model_fingerprint(s->m);
	cli_template_for_model(&s->tpl, sb_model_config(s->m), s->tok);
	set_model_id(s);
	if ((size_t)o->parallel > sb_ctx_max_batch(s->ctx)) {
		cli_error("--parallel: %d is more than the engine decodes at once (%zu)", o->parallel,
		          sb_ctx_max_batch(s->ctx));
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	size_t state_bytes = sb_state_bytes(s->m);
	sb_error err = {0};
	/* --mem bounds every state the server holds: a slot's, and for every
	 * request in the server (running or queued) its final state and the
	 * copy of the cached state it starts from; the cache gets the rest. */
	size_t limit = cli_gen_mem_limit(&g), fit = 0;
	size_t held = (size_t)o->parallel + 2 * (size_t)(o->parallel + o->queue);
	const char *mem_name = g.mem ? "--mem" : "--mem (default: 3/4 of RAM)";
	if (sb_state_budget(s->m, limit, mem_name, 1, held, &fit, &err) < 0) {
		rc = cli_fail(&err);
		goto done;
	}
	if (fit < held) {
		cli_error("--parallel %d and --queue %d hold up to %zu states of %zu bytes; %s allows %zu",
		          o->parallel, o->queue, held, state_bytes, mem_name, fit);
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	size_t left = limit - held * state_bytes;
	if (!o->cache_bytes) {
		o->cache_bytes = 32 * state_bytes < left ? 32 * state_bytes : left;
		if (o->cache_bytes < state_bytes)
			serve_log("no state cache: %s leaves %zu bytes, less than one state (%zu)",
			          mem_name, left, state_bytes);
	} else if (o->cache_bytes > left) {
		cli_error("--cache-bytes: %zu is more than %s leaves for the cache (%zu bytes after "
		          "%zu states for --parallel and --queue)", o->cache_bytes, mem_name, left, held);
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	if (o->cache_bytes < state_bytes)
		o->cache_bytes = 1; /* nothing fits: no cache */
	if (!(s->cache = serve_cache_new(s->m, o->cache_bytes, o->cache_dir, &err))) {
		rc = cli_fail(&err);
		goto done;
	}
	sb_sched_params sp = sb_sched_default_params();
	sp.max_batch = (size_t)o->parallel;
	sp.eos_id = s->eos;
	sp.prefill_chunk = 256;
	sp.text = sb_tokenizer_sched_text(s->tok);
	if (!(s->sched = sb_sched_new(s->ctx, &sp, &err))) {
		rc = cli_fail(&err);
		goto done;
	}
	if (pthread_create(&s->sched_thread, NULL, serve_sched_main, s) != 0) {
		cli_error("serve: cannot start the scheduler's thread");
		rc = CLI_EXIT_SOFTWARE;
		goto done;
	}
	s->sched_running = true;
	atomic_store(&s->ready, true);
	serve_log("model '%s' ready in %.2f s: %d slots, queue %d, state %zu bytes, cache %zu bytes%s%s",
	          s->model_id, cli_now() - t0, o->parallel, o->queue, state_bytes, o->cache_bytes,
	          o->cache_dir ? " in " : "", o->cache_dir ? o->cache_dir : "");

	int sig;
	while (!(sig = wait_signal(&sigs, 3600)))
		;
	serve_log("%s: draining %d request(s) in flight", sig == SIGTERM ? "SIGTERM" : "SIGINT",
	          atomic_load(&s->inflight));
	atomic_store(&s->draining, true);
	serve_http_quiesce(s);
	double until = cli_now() + o->timeout_s;
	while (atomic_load(&s->inflight) > 0 && cli_now() < until) {
		if (wait_signal(&sigs, 0.05)) {
			serve_log("second signal: cancelling what is left");
			break;
		}
	}
	serve_log("drained; exiting");
done:
	if (s->sched) {
		sb_sched_cancel_all(s->sched);
		sb_sched_shutdown(s->sched);
	}
	if (s->sched_running)
		pthread_join(s->sched_thread, NULL);
	/* Connections still open (idle keep-alive ones) are closed here; a
	 * request still waiting sees its job cancelled and ends. */
	serve_http_stop(s);
	sb_sched_free(s->sched);
	serve_cache_free(s->cache);
	sb_ctx_free(s->ctx);
	sb_tokenizer_free(s->tok);
	sb_model_free(s->m);
	cli_gen_free(&g);
	pthread_mutex_destroy(&s->qmu);
	serve_metrics_free(&s->met);
	free(s);
	return rc;
}
