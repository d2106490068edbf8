/* serve.h - what the files of `seqboat serve` share: the options, the
 * server (model, scheduler, cache, counters) and one request's generation
 * (a job).
 *
 *   serve.c        flags, startup, signals, draining
 *   serve_http.c   routes, request parsing, responses, server-sent events
 *   serve_chat.c   chat messages to tokens with the model's template
 *   serve_queue.c  the bounded queue: jobs handed to the scheduler
 *   serve_cache.c  the state cache
 *
 * Threads: libmicrohttpd runs one thread per connection, which parses the
 * request, submits a job and waits for it; one thread runs the scheduler
 * (sb_sched_serve), whose callbacks fill the job; the main thread waits
 * for SIGTERM/SIGINT. */
#ifndef SB_SERVE_H
#define SB_SERVE_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scheduler.h"
#include "seqboat.h"
#include "serve_cache.h"
#include "template.h"
#include "tokenizer.h"

typedef struct serve_opts {
	const char *host;        /* --host (default 127.0.0.1) */
	int port;                /* --port (default 8080; 0: any free port) */
	const char *model_dir;   /* -m; NULL: the default model */
	const char *alias;       /* --alias: the model id clients name */
	int threads;             /* -t; 0: all cores */
	float act_bias;
	int parallel;            /* --parallel: sequences decoded together */
	int queue;               /* --queue: requests waiting beyond them */
	size_t cache_bytes;      /* --cache-bytes; 0: 32 states */
	const char *cache_dir;   /* --cache-dir */
	const char *api_key;     /* --api-key or $SEQBOAT_API_KEY; NULL: none */
	double timeout_s;        /* --timeout: one request, queue included */
	size_t max_body;         /* --max-body: request bytes */
	int max_connections;     /* --max-connections */
	long max_tokens;         /* -n: when a request names none */
	sb_sampler_params sp;    /* the sampling defaults (-n ... --seed flags) */
	const char **stops;      /* (n_stops) --stop: added to every request's */
	size_t n_stops;
	bool seed_set;
	double load_delay_s;     /* --debug-load-delay (tests: /health while loading) */
} serve_opts;

typedef struct serve_metrics {
	pthread_mutex_t mu;
	uint64_t requests[8];    /* by route, see serve_route */
	uint64_t status_2xx, status_4xx, status_5xx, rejected_busy;
	uint64_t prompt_tokens, cached_tokens, completion_tokens;
	uint64_t cancelled, timeouts;
	double prompt_seconds, gen_seconds;
	/* Completion tokens per second over the last seconds: one bucket per
	 * second, (second, count). */
	uint64_t bucket_sec[16];
	uint64_t bucket_tokens[16];
} serve_metrics;

typedef struct serve_server {
	serve_opts o;
	atomic_bool ready;       /* the model is loaded */
	atomic_bool draining;    /* SIGTERM: refuse new work */
	atomic_int inflight;     /* requests between arrival and completion */
	sb_model *m;
	sb_tokenizer *tok;
	sb_ctx *ctx;
	sb_sched *sched;
	serve_cache *cache;
	cli_template tpl;
	int32_t eos;
	int V;
	char model_id[256];
	uint64_t fingerprint;
	long created;            /* start time (Unix seconds) for /v1/models */
	/* Admission: jobs submitted and not yet done. */
	pthread_mutex_t qmu;
	int active;
	serve_metrics met;
	pthread_t sched_thread;
	bool sched_running;
	struct MHD_Daemon *httpd;
	int bound_port;
} serve_server;

/* ------------------------------------------------------------- jobs */

/* What a request asks the scheduler for. Pointers are borrowed for the
 * call of serve_job_start. */
typedef struct serve_job_spec {
	const int32_t *tokens;   /* (n_tokens) the whole sequence to read */
	size_t n_tokens;
	sb_sampler_params sp;
	long max_tokens;
	const char *const *stops;
	size_t n_stops;
	int tpl_stop;            /* index in stops of the template's stop, or -1 */
	/* tokens[0..shared) open many conversations (bos and the system
	 * prompt): kept in the cache on their own, so that a new conversation
	 * with the same system prompt starts after it. 0: none. */
	size_t shared;
	bool text_at_start;      /* a chat reply (else a completion) */
	bool logprobs;
	int top_logprobs;
} serve_job_spec;

typedef struct serve_logprob_entry {
	int32_t token;
	float logprob;
	size_t n_top;
	sb_logprob top[SB_SCHED_MAX_TOP_LOGPROBS];
} serve_logprob_entry;

typedef enum serve_cancel {
	SERVE_CANCEL_NONE,
	SERVE_CANCEL_CLIENT,     /* the client went away */
	SERVE_CANCEL_TIMEOUT,    /* --timeout passed */
} serve_cancel;

/* One request's generation, shared by the connection's thread and the
 * scheduler's; every field below the mutex is read and written under it. */
typedef struct serve_job {
	serve_server *srv;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int refs;                /* the connection and the scheduler */
	uint64_t seq;            /* the scheduler's id */
	int32_t *tokens;         /* (n_tokens) the request's whole sequence */
	size_t n_tokens;
	size_t cached;           /* of them, from the cache */
	size_t fresh_shared;     /* of those, read by this request first (not
	                          * counted as cached in its usage) */
	int tpl_stop;
	bool logprobs;
	double t_start, t_first; /* submit, first token (0: none yet) */
	double deadline;
	/* output: */
	char *text;              /* (text_len) the completion so far */
	size_t text_len, text_cap;
	int32_t *gen;            /* (n_gen) sampled tokens but end-of-text */
	size_t n_gen, cap_gen;
	serve_logprob_entry *lp; /* (n_lp) with logprobs */
	size_t n_lp, cap_lp;
	/* after on_done: */
	bool done;
	sb_finish finish;
	int stop_index;
	size_t prompt_tokens, cached_tokens, completion_tokens;
	double queue_s, prompt_s, gen_s;
	sb_error error;
	sb_state *final;         /* owned until on_done hands it to the cache */
	serve_cache_entry *persist;
	serve_cancel cancel;
	bool oom;
} serve_job;

/* Outcomes of serve_job_start besides 0. */
enum { SERVE_BUSY = 1, SERVE_UNAVAILABLE = 2, SERVE_INVALID = 3 };

/* Looks the longest cached prefix up and submits the rest of the tokens.
 * Returns 0 with *out (release it with serve_job_release), SERVE_BUSY when
 * --parallel + --queue jobs are active, SERVE_UNAVAILABLE when shutting
 * down, SERVE_INVALID with *err for a request the scheduler refuses. */
int serve_job_start(serve_server *s, const serve_job_spec *spec, serve_job **out,
                    sb_error *err);
/* Asks the scheduler to end the job (idempotent). */
void serve_job_cancel(serve_job *j, serve_cancel why);
/* Drops the connection's reference: cancels a job still running, waits
 * for its end, writes its cache entry to the cache directory. */
void serve_job_release(serve_job *j);

/* The scheduler's thread: sb_sched_serve until shutdown. */
void *serve_sched_main(void *arg);

/* ------------------------------------------------------------ chat */

/* Turns a chat request's "messages" (checked here: an array of objects
 * with a known role and text content, the last one from the user) into
 * the token sequence, ending with the assistant prefix: each piece
 * tokenized on its own, and a reply the cache knows as the tokens that
 * were sampled for it, so that the sequence extends the previous turn's.
 * *tokens is malloc'd; *shared is the length of the bos + system piece
 * when the conversation opens with a system message, else 0. Returns 0; -1 with a message in why and the field
 * in *param (a 400); -2 when out of memory. */
int serve_chat_render(serve_server *s, json_t *messages, int32_t **tokens, size_t *n,
                      size_t *shared, char *why, size_t why_cap, const char **param);

/* ------------------------------------------------------------ http */

/* Starts libmicrohttpd on o.host:o.port (the model need not be loaded:
 * /health says 503 until s->ready). Prints the error; 0 or an exit status. */
int serve_http_start(serve_server *s);
/* Stops accepting connections (the listening socket is closed). */
void serve_http_quiesce(serve_server *s);
void serve_http_stop(serve_server *s);

/* --------------------------------------------------------- metrics */

void serve_metrics_init(serve_metrics *m);
void serve_metrics_free(serve_metrics *m);
/* Counts n completion tokens now. */
void serve_metrics_tokens(serve_metrics *m, uint64_t n);

#endif
