/* serve_http.c - the HTTP side of `seqboat serve`, on libmicrohttpd: the
 * routes, request parsing and checking, OpenAI's response and error
 * objects, server-sent events, /metrics.
 *
 * libmicrohttpd runs a thread per connection, so a handler may block: a
 * request's thread submits its job and waits for it (non-streaming), or
 * waits inside the content reader for the next piece of text (streaming).
 * While waiting it looks at the socket every 100 ms, so a client that
 * hangs up has its sequence cancelled even before a byte is written, and
 * it enforces the request's deadline. */
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gen.h"
#include "serve.h"
#include "serve_log.h"

enum {
	ROUTE_COMPLETIONS, ROUTE_CHAT, ROUTE_MODELS, ROUTE_HEALTH, ROUTE_METRICS,
	ROUTE_TOKENIZE, ROUTE_DETOKENIZE, ROUTE_OTHER, N_ROUTES
};
static const char *const route_names[N_ROUTES] = {
	"completions", "chat_completions", "models", "health", "metrics",
	"tokenize", "detokenize", "other",
};

#define MAX_STOPS 16

typedef struct conn {
	serve_server *s;
	struct MHD_Connection *mc;
	int route;
	const char *url;         /* libmicrohttpd's, valid for the request */
	char *body;
	size_t len, cap;
	bool too_big, counted;
	serve_job *job;
	/* streaming: */
	bool chat, include_usage;
	int top_logprobs;
	char id[64];
	long created;
	int phase;               /* see stream_next */
	size_t sent_text, sent_lp;
	char *out;               /* pending event bytes */
	size_t out_len, out_off, out_cap;
} conn;

/* ---------------------------------------------------------- metrics */

void serve_metrics_init(serve_metrics *m)
{
	memset(m, 0, sizeof *m);
	pthread_mutex_init(&m->mu, NULL);
}

void serve_metrics_free(serve_metrics *m)
{
	pthread_mutex_destroy(&m->mu);
}

void serve_metrics_tokens(serve_metrics *m, uint64_t n)
{
	uint64_t sec = (uint64_t)cli_now();
	size_t b = sec % 16;
	pthread_mutex_lock(&m->mu);
	if (m->bucket_sec[b] != sec) {
		m->bucket_sec[b] = sec;
		m->bucket_tokens[b] = 0;
	}
	m->bucket_tokens[b] += n;
	pthread_mutex_unlock(&m->mu);
}

static void count_status(serve_server *s, unsigned status)
{
	pthread_mutex_lock(&s->met.mu);
	if (status < 300)
		s->met.status_2xx++;
	else if (status < 500)
		s->met.status_4xx++;
	else
		s->met.status_5xx++;
	if (status == 503)
		s->met.rejected_busy++;
	pthread_mutex_unlock(&s->met.mu);
}

/* ------------------------------------------------------- responses */

static enum MHD_Result queue_buf(conn *c, unsigned status, const char *type, char *buf,
                                 size_t len, const char *retry_after)
{
	struct MHD_Response *r =
		MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(buf);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	if (retry_after)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	enum MHD_Result rc = MHD_queue_response(c->mc, status, r);
	MHD_destroy_response(r);
	count_status(c->s, status);
	return rc;
}

static enum MHD_Result queue_json(conn *c, unsigned status, json_t *o, const char *retry)
{
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return MHD_NO;
	size_t n = strlen(s);
	char *t = realloc(s, n + 2);
	if (t) {
		s = t;
		s[n++] = '\n';
		s[n] = 0;
	}
	return queue_buf(c, status, "application/json", s, n, retry);
}

/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}. */
static json_t *error_object(const char *type, const char *param, const char *code,
                            const char *msg)
{
	return json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message", msg, "type", type,
	                 "param", param, "code", code);
}

static enum MHD_Result __attribute__((format(printf, 6, 7)))
send_error(conn *c, unsigned status, const char *type, const char *param, const char *code,
           const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	const char *retry = status == MHD_HTTP_SERVICE_UNAVAILABLE ? "1" : NULL;
	return queue_json(c, status, error_object(type, param, code, msg), retry);
}

static enum MHD_Result bad_request(conn *c, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static enum MHD_Result bad_request(conn *c, const char *param, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return queue_json(c, MHD_HTTP_BAD_REQUEST,
	                  error_object("invalid_request_error", param, NULL, msg), NULL);
}

/* --------------------------------------------------------- checking */

typedef struct req {
	serve_job_spec spec;
	const char *stops[MAX_STOPS + 8 + 1];
	int32_t bias_ids[1024];
	float bias_values[1024];
	bool stream, include_usage;
	int top_logprobs;        /* completions: logprobs N; chat: top_logprobs */
	char why[1024];
	const char *param;
} req;

static int fail(req *r, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fail(req *r, const char *param, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->why, sizeof r->why, fmt, ap);
	va_end(ap);
	r->param = param;
	return -1;
}

/* A field that is absent or null is left alone (returns 0 with *set
 * false). */
static int get_number(req *r, json_t *o, const char *k, double lo, double hi, double *out,
                      bool *set)
{
	json_t *v = json_object_get(o, k);
	if (set)
		*set = false;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return fail(r, k, "%s: expected a number", k);
	double x = json_number_value(v);
	if (!isfinite(x) || x < lo || x > hi)
		return fail(r, k, "%s: %g is out of range (expected %g to %g)", k, x, lo, hi);
	*out = x;
	if (set)
		*set = true;
	return 0;
}

static int get_int(req *r, json_t *o, const char *k, long lo, long hi, long *out, bool *set)
{
	json_t *v = json_object_get(o, k);
	*set = false;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v))
		return fail(r, k, "%s: expected an integer", k);
	json_int_t x = json_integer_value(v);
	if (x < lo || x > hi)
		return fail(r, k, "%s: %lld is out of range (expected %ld to %ld)", k, (long long)x,
		            lo, hi);
	*out = (long)x;
	*set = true;
	return 0;
}

static int get_bool(req *r, json_t *o, const char *k, bool *out)
{
	json_t *v = json_object_get(o, k);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return fail(r, k, "%s: expected true or false", k);
	*out = json_is_true(v);
	return 0;
}

/* The fields both endpoints share (OpenAI's names, and llama.cpp's top_k,
 * min_p and repeat_penalty). */
static int parse_common(serve_server *s, json_t *o, req *r, bool chat)
{
	serve_job_spec *sp = &r->spec;
	sp->sp = s->o.sp;
	sp->max_tokens = s->o.max_tokens;
	sp->tpl_stop = -1;
	sp->text_at_start = chat;
	bool set;
	double x;
	long n;

	json_t *model = json_object_get(o, "model");
	if (model && !json_is_null(model)) {
		if (!json_is_string(model))
			return fail(r, "model", "model: expected a string");
		if (strcmp(json_string_value(model), s->model_id))
			return fail(r, "model", "model: '%.200s' is not served here (this server has '%s')",
			            json_string_value(model), s->model_id);
	}
	if (get_int(r, o, "n", 1, 1, &n, &set) < 0 || get_int(r, o, "best_of", 1, 1, &n, &set) < 0)
		return fail(r, r->param, "%s: only 1 is supported", r->param);
	const char *mt = chat && json_object_get(o, "max_completion_tokens") ? "max_completion_tokens"
	                                                                   : "max_tokens";
	if (get_int(r, o, mt, 1, 1L << 30, &n, &set) < 0)
		return -1;
	if (set)
		sp->max_tokens = n;
	if (get_number(r, o, "temperature", 0, 2, &x, &set) < 0)
		return -1;
	if (set)
		sp->sp.temp = (float)x;
	if (get_number(r, o, "top_p", 0, 1, &x, &set) < 0)
		return -1;
	if (set) {
		if (x <= 0)
			return fail(r, "top_p", "top_p: expected a number above 0 and at most 1");
		sp->sp.top_p = (float)x;
	}
	if (get_int(r, o, "top_k", 0, 1L << 30, &n, &set) < 0)
		return -1;
	if (set)
		sp->sp.top_k = (int)n;
	if (get_number(r, o, "min_p", 0, 1, &x, &set) < 0)
		return -1;
	if (set)
		sp->sp.min_p = (float)x;
	if (get_number(r, o, "presence_penalty", -2, 2, &x, &set) < 0)
		return -1;
	if (set)
		sp->sp.presence_penalty = (float)x;
	if (get_number(r, o, "frequency_penalty", -2, 2, &x, &set) < 0)
		return -1;
	if (set)
		sp->sp.frequency_penalty = (float)x;
	if (get_number(r, o, "repeat_penalty", 0.01, 100, &x, &set) < 0)
		return -1;
	if (set)
		sp->sp.repeat_penalty = (float)x;
	json_t *seed = json_object_get(o, "seed");
	if (seed && !json_is_null(seed)) {
		if (!json_is_integer(seed))
			return fail(r, "seed", "seed: expected an integer");
		sp->sp.seed = (uint64_t)json_integer_value(seed);
	} else if (!s->o.seed_set) {
		sp->sp.seed = cli_random_seed();
	}

	/* stop: a string or up to MAX_STOPS strings; the server's --stop too. */
	json_t *stop = json_object_get(o, "stop");
	size_t ns = 0;
	if (stop && !json_is_null(stop)) {
		if (json_is_string(stop)) {
			r->stops[ns++] = json_string_value(stop);
		} else if (json_is_array(stop)) {
			if (json_array_size(stop) > MAX_STOPS)
				return fail(r, "stop", "stop: at most %d strings", MAX_STOPS);
			size_t i;
			json_t *v;
			json_array_foreach(stop, i, v) {
				if (!json_is_string(v))
					return fail(r, "stop", "stop[%zu]: expected a string", i);
				r->stops[ns++] = json_string_value(v);
			}
		} else {
			return fail(r, "stop", "stop: expected a string or an array of strings");
		}
		for (size_t i = 0; i < ns; i++)
			if (!*r->stops[i])
				return fail(r, "stop", "stop: expected non-empty strings");
	}
	for (size_t i = 0; i < s->o.n_stops; i++)
		r->stops[ns++] = s->o.stops[i];
	if (chat && s->tpl.stop[0]) {
		sp->tpl_stop = (int)ns;
		r->stops[ns++] = s->tpl.stop;
	}
	for (size_t i = 0; chat && i < s->tpl.n_stops; i++)
		r->stops[ns++] = s->tpl.stops[i];
	sp->stops = r->stops;
	sp->n_stops = ns;

	/* logit_bias: {"id": bias}, bias -100..100; -100 bans the token. */
	json_t *lb = json_object_get(o, "logit_bias");
	if (lb && !json_is_null(lb)) {
		if (!json_is_object(lb))
			return fail(r, "logit_bias", "logit_bias: expected an object of token id to bias");
		if (json_object_size(lb) > sizeof r->bias_ids / sizeof r->bias_ids[0])
			return fail(r, "logit_bias", "logit_bias: at most %zu tokens",
			            sizeof r->bias_ids / sizeof r->bias_ids[0]);
		const char *k;
		json_t *v;
		size_t nb = 0;
		json_object_foreach(lb, k, v) {
			char *end;
			errno = 0;
			long id = strtol(k, &end, 10);
			if (!*k || *end || errno || id < 0 || id >= s->V)
				return fail(r, "logit_bias", "logit_bias: '%.64s' is not a token id (expected 0 to %d)", k, s->V - 1);
			if (!json_is_number(v) || !isfinite(json_number_value(v)) ||
			    fabs(json_number_value(v)) > 100)
				return fail(r, "logit_bias", "logit_bias[%s]: expected a number from -100 to 100", k);
			double b = json_number_value(v);
			r->bias_ids[nb] = (int32_t)id;
			r->bias_values[nb] = b <= -100 ? -INFINITY : (float)b;
			nb++;
		}
		sp->sp.bias_ids = r->bias_ids;
		sp->sp.bias_values = r->bias_values;
		sp->sp.n_bias = nb;
	}

	if (get_bool(r, o, "stream", &r->stream) < 0)
		return -1;
	json_t *so = json_object_get(o, "stream_options");
	if (so && !json_is_null(so)) {
		if (!json_is_object(so))
			return fail(r, "stream_options", "stream_options: expected an object");
		if (get_bool(r, so, "include_usage", &r->include_usage) < 0)
			return fail(r, "stream_options", "stream_options.include_usage: expected true or false");
	}
	json_t *tools = json_object_get(o, "tools");
	if (tools && !json_is_null(tools) && !(json_is_array(tools) && !json_array_size(tools)))
		return fail(r, "tools", "tools: tool calls are not supported by this server");
	json_t *rf = json_object_get(o, "response_format");
	if (rf && !json_is_null(rf)) {
		json_t *t = json_object_get(rf, "type");
		if (!json_is_object(rf) || !json_is_string(t) || strcmp(json_string_value(t), "text"))
			return fail(r, "response_format", "response_format: only {\"type\": \"text\"} is supported");
	}

	if (chat) {
		bool lp = false;
		if (get_bool(r, o, "logprobs", &lp) < 0 ||
		    get_int(r, o, "top_logprobs", 0, SB_SCHED_MAX_TOP_LOGPROBS, &n, &set) < 0)
			return -1;
		if (set && !lp)
			return fail(r, "top_logprobs", "top_logprobs: needs logprobs: true");
		sp->logprobs = lp;
		sp->top_logprobs = set ? (int)n : 0;
	} else {
		if (get_int(r, o, "logprobs", 0, 5, &n, &set) < 0)
			return -1;
		sp->logprobs = set;
		sp->top_logprobs = set ? (int)n : 0;
		bool echo = false;
		if (get_bool(r, o, "echo", &echo) < 0)
			return -1;
		if (echo)
			return fail(r, "echo", "echo: not supported by this server");
		json_t *suffix = json_object_get(o, "suffix");
		if (suffix && !json_is_null(suffix))
			return fail(r, "suffix", "suffix: not supported by this server");
	}
	r->top_logprobs = sp->top_logprobs;
	return 0;
}

/* The completion prompt: a string, one string in an array, or token ids. */
static int completion_tokens(serve_server *s, json_t *o, req *r, int32_t **ids, size_t *n)
{
	json_t *p = json_object_get(o, "prompt");
	if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
		p = json_array_get(p, 0);
	if (json_is_string(p)) {
		sb_error err = {0};
		if (sb_tokenizer_encode(s->tok, json_string_value(p), json_string_length(p), true, ids,
		                        n, &err) < 0)
			return fail(r, "prompt", "prompt: %s", err.msg);
		return 0;
	}
	if (json_is_array(p) && json_array_size(p) > 0) {
		size_t k = json_array_size(p), i;
		json_t *v;
		if (!(*ids = malloc(k * sizeof **ids)))
			return fail(r, "prompt", "out of memory");
		json_array_foreach(p, i, v) {
			if (!json_is_integer(v) || json_integer_value(v) < 0 ||
			    json_integer_value(v) >= s->V) {
				free(*ids);
				*ids = NULL;
				return fail(r, "prompt", "prompt: expected a string, or an array of token ids from 0 to %d (one prompt per request)", s->V - 1);
			}
			(*ids)[i] = (int32_t)json_integer_value(v);
		}
		*n = k;
		return 0;
	}
	return fail(r, "prompt", "prompt: expected a string or an array of token ids");
}

/* ------------------------------------------------------------ waiting */

/* True when the client closed its side of the connection. */
static bool client_gone(conn *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (!ci)
		return false;
	char b;
	ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0)
		return true;
	return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/* Waits (the job's lock held) up to 100 ms for news, then cancels the job
 * if its client is gone or its deadline passed. */
static void wait_a_little(conn *c)
{
	serve_job *j = c->job;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 100 * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&j->cv, &j->mu, &ts);
	if (j->done)
		return;
	pthread_mutex_unlock(&j->mu);
	if (client_gone(c))
		serve_job_cancel(j, SERVE_CANCEL_CLIENT);
	else if (cli_now() > j->deadline)
		serve_job_cancel(j, SERVE_CANCEL_TIMEOUT);
	pthread_mutex_lock(&j->mu);
}

/* ---------------------------------------------------------- results */

static const char *finish_reason(sb_finish f)
{
	return f == SB_FINISH_LENGTH ? "length" : "stop";
}

static json_t *usage_object(const serve_job *j)
{
	size_t prompt = j->prompt_tokens + j->cached_tokens;
	size_t cached = j->cached_tokens - (j->fresh_shared <= j->cached_tokens ? j->fresh_shared : 0);
	return json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)prompt,
	                 "completion_tokens", (json_int_t)j->completion_tokens, "total_tokens",
	                 (json_int_t)(prompt + j->completion_tokens), "prompt_tokens_details",
	                 "cached_tokens", (json_int_t)cached);
}

static json_t *timings_object(const serve_job *j)
{
	double ttft = j->t_first ? j->t_first - j->t_start : 0;
	return json_pack("{s:I,s:I,s:f,s:f,s:I,s:f,s:f}", "prompt_n", (json_int_t)j->prompt_tokens,
	                 "cache_n", (json_int_t)j->cached_tokens, "queue_ms", j->queue_s * 1e3,
	                 "prompt_ms", j->prompt_s * 1e3, "predicted_n",
	                 (json_int_t)j->completion_tokens, "predicted_ms", j->gen_s * 1e3,
	                 "ttft_ms", ttft * 1e3);
}

/* A token's text as it reads inside a text (a SentencePiece piece keeps
 * its leading space), so that the pieces of a completion join into it. */
static json_t *piece_json(serve_server *s, int32_t id)
{
	sb_error err = {0};
	sb_detok *d = sb_detok_new(s->tok, &err);
	const char *o = NULL, *f = NULL;
	size_t ol = 0, fl = 0;
	json_t *v = NULL;
	if (d) {
		sb_detok_reset(d, false);
		if (sb_detok_push(d, id, &o, &ol, &err) == 0) {
			char *t = malloc(ol + 16);
			if (t) {
				memcpy(t, o, ol);
				sb_detok_flush(d, &f, &fl);
				if (fl <= 15) {
					memcpy(t + ol, f, fl);
					ol += fl;
				}
				v = json_stringn(t, ol);
				free(t);
			}
		}
	}
	sb_detok_free(d);
	return v ? v : json_string("");
}

static json_t *bytes_json(serve_server *s, int32_t id)
{
	char *t = NULL;
	size_t len = 0;
	sb_error err = {0};
	json_t *a = json_array();
	if (sb_tokenizer_decode(s->tok, &id, 1, &t, &len, &err) == 0)
		for (size_t i = 0; i < len; i++)
			json_array_append_new(a, json_integer((unsigned char)t[i]));
	free(t);
	return a;
}

/* logprobs for entries [from, to): chat's {"content": [...]} or the
 * completions' {"tokens", "token_logprobs", "top_logprobs"}. */
static json_t *logprobs_json(conn *c, const serve_job *j, size_t from, size_t to)
{
	serve_server *s = c->s;
	if (c->chat) {
		json_t *content = json_array();
		for (size_t i = from; i < to; i++) {
			const serve_logprob_entry *e = &j->lp[i];
			json_t *top = json_array();
			for (size_t k = 0; k < e->n_top && k < (size_t)c->top_logprobs; k++)
				json_array_append_new(top, json_pack("{s:o,s:f,s:o}", "token",
				                                     piece_json(s, e->top[k].token), "logprob",
				                                     (double)e->top[k].logprob, "bytes",
				                                     bytes_json(s, e->top[k].token)));
			json_array_append_new(content, json_pack("{s:o,s:f,s:o,s:o}", "token",
			                                         piece_json(s, e->token), "logprob",
			                                         (double)e->logprob, "bytes",
			                                         bytes_json(s, e->token), "top_logprobs", top));
		}
		return json_pack("{s:o}", "content", content);
	}
	json_t *tokens = json_array(), *lps = json_array(), *tops = json_array();
	for (size_t i = from; i < to; i++) {
		const serve_logprob_entry *e = &j->lp[i];
		json_array_append_new(tokens, piece_json(s, e->token));
		json_array_append_new(lps, json_real(e->logprob));
		json_t *top = json_object();
		for (size_t k = 0; k < e->n_top && k < (size_t)c->top_logprobs; k++) {
			json_t *p = piece_json(s, e->top[k].token);
			json_object_set_new(top, json_string_value(p), json_real(e->top[k].logprob));
			json_decref(p);
		}
		json_array_append_new(tops, top);
	}
	return json_pack("{s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs",
	                 tops);
}

/* The job ended without a reply to give: the error response (or 0 if
 * there is one to give). */
static enum MHD_Result job_error(conn *c, const serve_job *j, bool *sent)
{
	*sent = true;
	if (j->finish == SB_FINISH_CANCELLED) {
		if (j->cancel == SERVE_CANCEL_TIMEOUT) {
			pthread_mutex_lock(&c->s->met.mu);
			c->s->met.timeouts++;
			pthread_mutex_unlock(&c->s->met.mu);
			return send_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "timeout_error", NULL, "timeout",
			                  "the request took longer than the server's limit of %g s",
			                  c->s->o.timeout_s);
		}
		if (j->cancel == SERVE_CANCEL_CLIENT)
			return MHD_NO; /* nobody to answer */
		return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL,
		                  "shutting_down", "the server is shutting down");
	}
	if (j->finish == SB_FINISH_ERROR) {
		if (j->error.code == SB_ERR_ARG)
			return bad_request(c, NULL, "%s", j->error.msg);
		return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
		                  "generation failed: %s", j->error.msg);
	}
	if (j->oom)
		return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
		                  "out of memory");
	*sent = false;
	return MHD_YES;
}

static void make_id(conn *c)
{
	static atomic_ulong counter;
	unsigned long k = atomic_fetch_add(&counter, 1);
	snprintf(c->id, sizeof c->id, "%s-%lx%04lx", c->chat ? "chatcmpl" : "cmpl",
	         (unsigned long)time(NULL), k & 0xffff);
	c->created = (long)time(NULL);
}

static enum MHD_Result respond_whole(conn *c)
{
	serve_server *s = c->s;
	serve_job *j = c->job;
	pthread_mutex_lock(&j->mu);
	while (!j->done)
		wait_a_little(c);
	pthread_mutex_unlock(&j->mu);
	bool sent;
	enum MHD_Result rc = job_error(c, j, &sent);
	if (sent)
		return rc;
	json_t *choice;
	json_t *text = json_stringn_nocheck(j->text ? j->text : "", j->text_len);
	json_t *lp = j->logprobs ? logprobs_json(c, j, 0, j->n_lp) : json_null();
	if (c->chat)
		choice = json_pack("{s:i,s:{s:s,s:o},s:o,s:s}", "index", 0, "message", "role",
		                   "assistant", "content", text, "logprobs", lp, "finish_reason",
		                   finish_reason(j->finish));
	else
		choice = json_pack("{s:o,s:i,s:o,s:s}", "text", text, "index", 0, "logprobs", lp,
		                   "finish_reason", finish_reason(j->finish));
	char fp[40];
	snprintf(fp, sizeof fp, "seqboat-%016llx", (unsigned long long)s->fingerprint);
	json_t *o = json_pack("{s:s,s:s,s:i,s:s,s:s,s:[o],s:o,s:o}", "id", c->id, "object",
	                      c->chat ? "chat.completion" : "text_completion", "created",
	                      (int)c->created, "model", s->model_id, "system_fingerprint", fp,
	                      "choices", choice, "usage", usage_object(j), "timings",
	                      timings_object(j));
	return queue_json(c, MHD_HTTP_OK, o, NULL);
}

/* ----------------------------------------------------------- streaming */

static bool out_append(conn *c, const char *s, size_t n)
{
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 1024;
		while (cap < c->out_len + n)
			cap *= 2;
		char *p = realloc(c->out, cap);
		if (!p)
			return false;
		c->out = p;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, s, n);
	c->out_len += n;
	return true;
}

/* Appends "data: <json>\n\n" and consumes o. */
static bool out_event(conn *c, json_t *o)
{
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return false;
	bool ok = out_append(c, "data: ", 6) && out_append(c, s, strlen(s)) &&
	          out_append(c, "\n\n", 2);
	free(s);
	return ok;
}

static json_t *chunk(conn *c, json_t *choice)
{
	serve_server *s = c->s;
	char fp[40];
	snprintf(fp, sizeof fp, "seqboat-%016llx", (unsigned long long)s->fingerprint);
	return json_pack("{s:s,s:s,s:i,s:s,s:s,s:[o]}", "id", c->id, "object",
	                 c->chat ? "chat.completion.chunk" : "text_completion", "created",
	                 (int)c->created, "model", s->model_id, "system_fingerprint", fp,
	                 "choices", choice);
}

/* Makes the next events (c->out), waiting for the job as needed. Phases:
 * 0 the chat role, 1 text as it comes, 2 the finish (or an error event),
 * 3 usage (stream_options.include_usage), 4 [DONE], 5 the end. False
 * when the stream must be cut (out of memory, the client is gone). */
static bool stream_next(conn *c)
{
	serve_job *j = c->job;
	bool ok = true;
	pthread_mutex_lock(&j->mu);
	while (c->out_len == 0 && ok && c->phase < 5) {
		switch (c->phase) {
		case 0:
			if (c->chat)
				ok = out_event(c, chunk(c, json_pack("{s:i,s:{s:s,s:s},s:n,s:n}", "index", 0,
				                                     "delta", "role", "assistant", "content", "",
				                                     "logprobs", "finish_reason")));
			c->phase = 1;
			break;
		case 1:
			if (j->text_len > c->sent_text || j->n_lp > c->sent_lp) {
				json_t *t = json_stringn_nocheck(j->text + c->sent_text,
				                                 j->text_len - c->sent_text);
				json_t *lp = j->logprobs ? logprobs_json(c, j, c->sent_lp, j->n_lp)
				                         : json_null();
				c->sent_text = j->text_len;
				c->sent_lp = j->n_lp;
				if (c->chat)
					ok = out_event(c, chunk(c, json_pack("{s:i,s:{s:o},s:o,s:n}", "index", 0,
					                                     "delta", "content", t, "logprobs", lp,
					                                     "finish_reason")));
				else
					ok = out_event(c, chunk(c, json_pack("{s:o,s:i,s:o,s:n}", "text", t,
					                                     "index", 0, "logprobs", lp,
					                                     "finish_reason")));
			} else if (j->done) {
				c->phase = 2;
			} else {
				wait_a_little(c);
				if (j->cancel == SERVE_CANCEL_CLIENT)
					ok = false;
			}
			break;
		case 2: {
			bool err = j->finish == SB_FINISH_CANCELLED || j->finish == SB_FINISH_ERROR ||
			           j->oom;
			if (err) {
				const char *msg = j->cancel == SERVE_CANCEL_TIMEOUT
				                          ? "the request took longer than the server's limit"
				                  : j->finish == SB_FINISH_ERROR ? j->error.msg
				                  : j->oom                       ? "out of memory"
				                                                 : "the server is shutting down";
				const char *type = j->cancel == SERVE_CANCEL_TIMEOUT ? "timeout_error"
				                                                      : "server_error";
				ok = out_event(c, error_object(type, NULL, NULL, msg));
				if (j->cancel == SERVE_CANCEL_TIMEOUT) {
					pthread_mutex_lock(&c->s->met.mu);
					c->s->met.timeouts++;
					pthread_mutex_unlock(&c->s->met.mu);
				}
				c->phase = 4;
				break;
			}
			if (c->chat)
				ok = out_event(c, chunk(c, json_pack("{s:i,s:{},s:n,s:s}", "index", 0, "delta",
				                                     "logprobs", "finish_reason",
				                                     finish_reason(j->finish))));
			else
				ok = out_event(c, chunk(c, json_pack("{s:s,s:i,s:n,s:s}", "text", "", "index",
				                                     0, "logprobs", "finish_reason",
				                                     finish_reason(j->finish))));
			c->phase = 3;
			break;
		}
		case 3:
			if (c->include_usage) {
				json_t *o = chunk(c, json_null());
				json_object_set_new(o, "choices", json_array());
				json_object_set_new(o, "usage", usage_object(j));
				json_object_set_new(o, "timings", timings_object(j));
				ok = out_event(c, o);
			}
			c->phase = 4;
			break;
		case 4:
			ok = out_append(c, "data: [DONE]\n\n", 14);
			c->phase = 5;
			break;
		}
	}
	pthread_mutex_unlock(&j->mu);
	return ok;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	conn *c = cls;
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		if (c->phase == 5)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (!stream_next(c))
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (c->out_len == 0)
			return MHD_CONTENT_READER_END_OF_STREAM;
	}
	size_t n = c->out_len - c->out_off;
	if (n > max)
		n = max;
	memcpy(buf, c->out + c->out_off, n);
	c->out_off += n;
	return (ssize_t)n;
}

static enum MHD_Result respond_stream(conn *c)
{
	struct MHD_Response *r =
		MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, c, NULL);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	enum MHD_Result rc = MHD_queue_response(c->mc, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	count_status(c->s, MHD_HTTP_OK);
	return rc;
}

/* ------------------------------------------------------------- routes */

static json_t *parse_body(conn *c, req *r)
{
	json_error_t je;
	json_t *o = json_loadb(c->body ? c->body : "", c->len, JSON_REJECT_DUPLICATES, &je);
	if (!o) {
		fail(r, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
		     je.column);
		return NULL;
	}
	if (!json_is_object(o)) {
		json_decref(o);
		fail(r, NULL, "the body must be a JSON object");
		return NULL;
	}
	return o;
}

static enum MHD_Result generate(conn *c, bool chat)
{
	serve_server *s = c->s;
	req *r = calloc(1, sizeof *r);
	if (!r)
		return MHD_NO;
	enum MHD_Result rc;
	int32_t *ids = NULL;
	size_t n = 0;
	json_t *o = parse_body(c, r);
	if (!o || parse_common(s, o, r, chat) < 0) {
		rc = bad_request(c, r->param, "%s", r->why);
		goto done;
	}
	if (chat) {
		int k = serve_chat_render(s, json_object_get(o, "messages"), &ids, &n, &r->spec.shared, r->why,
		                          sizeof r->why, &r->param);
		if (k == -2) {
			rc = send_error(c, 500, "server_error", NULL, NULL, "out of memory");
			goto done;
		}
		if (k < 0) {
			rc = bad_request(c, r->param, "%s", r->why);
			goto done;
		}
	} else if (completion_tokens(s, o, r, &ids, &n) < 0) {
		rc = bad_request(c, r->param, "%s", r->why);
		goto done;
	}
	if (n == 0) {
		rc = bad_request(c, "prompt", "the prompt is empty and the model has no beginning-of-sequence token");
		goto done;
	}
	r->spec.tokens = ids;
	r->spec.n_tokens = n;
	c->chat = chat;
	c->include_usage = r->include_usage;
	c->top_logprobs = r->top_logprobs;
	make_id(c);
	sb_error err = {0};
	int k = serve_job_start(s, &r->spec, &c->job, &err);
	if (k == SERVE_BUSY) {
		rc = send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, "server_busy",
		                "the server is busy (%d requests running or queued); retry later",
		                s->o.parallel + s->o.queue);
	} else if (k == SERVE_UNAVAILABLE) {
		rc = send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, "shutting_down",
		                "the server is shutting down");
	} else if (k == SERVE_INVALID) {
		if (err.code == SB_ERR_ARG)
			rc = bad_request(c, NULL, "%s", err.msg);
		else
			rc = send_error(c, 500, "server_error", NULL, NULL, "%s", err.msg);
	} else {
		rc = r->stream ? respond_stream(c) : respond_whole(c);
	}
done:
	json_decref(o);
	free(ids);
	free(r);
	return rc;
}

static enum MHD_Result tokenize(conn *c)
{
	serve_server *s = c->s;
	req r = {0};
	json_t *o = parse_body(c, &r);
	if (!o)
		return bad_request(c, NULL, "%s", r.why);
	json_t *t = json_object_get(o, "content");
	bool special = false, pieces = false;
	if (!json_is_string(t) || get_bool(&r, o, "add_special", &special) < 0 ||
	    get_bool(&r, o, "with_pieces", &pieces) < 0) {
		json_decref(o);
		return bad_request(c, r.param ? r.param : "content", "%s",
		                   r.param ? r.why : "content: expected a string");
	}
	int32_t *ids = NULL;
	size_t n = 0;
	sb_error err = {0};
	if (sb_tokenizer_encode(s->tok, json_string_value(t), json_string_length(t), special, &ids,
	                        &n, &err) < 0) {
		json_decref(o);
		return bad_request(c, "content", "content: %s", err.msg);
	}
	json_decref(o);
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++) {
		if (pieces)
			json_array_append_new(a, json_pack("{s:i,s:o}", "id", ids[i], "piece",
			                                   piece_json(s, ids[i])));
		else
			json_array_append_new(a, json_integer(ids[i]));
	}
	free(ids);
	return queue_json(c, MHD_HTTP_OK, json_pack("{s:o}", "tokens", a), NULL);
}

static enum MHD_Result detokenize(conn *c)
{
	serve_server *s = c->s;
	req r = {0};
	json_t *o = parse_body(c, &r);
	if (!o)
		return bad_request(c, NULL, "%s", r.why);
	json_t *t = json_object_get(o, "tokens");
	size_t n = json_is_array(t) ? json_array_size(t) : 0, i;
	int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
	json_t *v;
	bool ok = json_is_array(t) && ids;
	if (ok)
		json_array_foreach(t, i, v) {
			if (!json_is_integer(v) || json_integer_value(v) < 0 ||
			    json_integer_value(v) >= s->V) {
				ok = false;
				break;
			}
			ids[i] = (int32_t)json_integer_value(v);
		}
	json_decref(o);
	if (!ok) {
		free(ids);
		return bad_request(c, "tokens", "tokens: expected an array of token ids from 0 to %d",
		                   s->V - 1);
	}
	char *text = NULL;
	size_t len = 0;
	sb_error err = {0};
	int rc = sb_tokenizer_decode(s->tok, ids, n, &text, &len, &err);
	free(ids);
	if (rc < 0)
		return bad_request(c, "tokens", "tokens: %s", err.msg);
	json_t *js = json_stringn_nocheck(text, len);
	free(text);
	return queue_json(c, MHD_HTTP_OK, json_pack("{s:o}", "content", js), NULL);
}

static enum MHD_Result models(conn *c)
{
	serve_server *s = c->s;
	const sb_config *cfg = sb_model_config(s->m);
	return queue_json(c, MHD_HTTP_OK,
	                  json_pack("{s:s,s:[{s:s,s:s,s:I,s:s,s:{s:I,s:I,s:i,s:I}}]}", "object",
	                            "list", "data", "id", s->model_id, "object", "model", "created",
	                            (json_int_t)s->created, "owned_by", "seqboat", "meta",
	                            "n_params", (json_int_t)sb_model_n_params(s->m), "n_vocab",
	                            (json_int_t)cfg->vocab_size, "window", cfg->window,
	                            "state_bytes", (json_int_t)sb_state_bytes(s->m)),
	                  NULL);
}

typedef struct textbuf {
	char *p;
	size_t len, cap;
	bool oom;
} textbuf;

static void tb_printf(textbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(textbuf *b, const char *fmt, ...)
{
	if (b->oom)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? 2 * b->cap : 4096;
		while (cap < b->len + (size_t)n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

static void metric(textbuf *b, const char *name, const char *type, const char *help,
                   double v)
{
	tb_printf(b, "# HELP seqboat_%s %s\n# TYPE seqboat_%s %s\nseqboat_%s %.17g\n", name, help,
	          name, type, name, v);
}

static enum MHD_Result metrics(conn *c)
{
	serve_server *s = c->s;
	textbuf b = {0};
	serve_metrics m;
	pthread_mutex_lock(&s->met.mu);
	memcpy(&m, &s->met, sizeof m);
	pthread_mutex_unlock(&s->met.mu);
	uint64_t now = (uint64_t)cli_now(), recent = 0;
	for (size_t i = 0; i < 16; i++)
		if (m.bucket_sec[i] < now && m.bucket_sec[i] + 10 >= now)
			recent += m.bucket_tokens[i];
	tb_printf(&b, "# HELP seqboat_requests_total HTTP requests by route.\n"
	              "# TYPE seqboat_requests_total counter\n");
	for (int i = 0; i < N_ROUTES; i++)
		tb_printf(&b, "seqboat_requests_total{route=\"%s\"} %llu\n", route_names[i],
		          (unsigned long long)m.requests[i]);
	tb_printf(&b, "# HELP seqboat_responses_total HTTP responses by status class.\n"
	              "# TYPE seqboat_responses_total counter\n"
	              "seqboat_responses_total{class=\"2xx\"} %llu\n"
	              "seqboat_responses_total{class=\"4xx\"} %llu\n"
	              "seqboat_responses_total{class=\"5xx\"} %llu\n",
	          (unsigned long long)m.status_2xx, (unsigned long long)m.status_4xx,
	          (unsigned long long)m.status_5xx);
	metric(&b, "rejected_total", "counter", "Requests answered 503 (busy or shutting down).",
	       (double)m.rejected_busy);
	metric(&b, "prompt_tokens_total", "counter", "Prompt tokens prefilled.",
	       (double)m.prompt_tokens);
	metric(&b, "cached_tokens_total", "counter", "Prompt tokens taken from the state cache.",
	       (double)m.cached_tokens);
	metric(&b, "completion_tokens_total", "counter", "Tokens generated.",
	       (double)m.completion_tokens);
	metric(&b, "tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
	       (double)recent / 10.0);
	metric(&b, "prompt_seconds_total", "counter", "Seconds spent reading prompts.",
	       m.prompt_seconds);
	metric(&b, "generation_seconds_total", "counter", "Seconds spent generating.",
	       m.gen_seconds);
	metric(&b, "requests_cancelled_total", "counter",
	       "Sequences cancelled (client gone, timeout, shutdown).", (double)m.cancelled);
	metric(&b, "request_timeouts_total", "counter", "Requests that passed --timeout.",
	       (double)m.timeouts);
	bool ready = atomic_load(&s->ready);
	metric(&b, "ready", "gauge", "1 once the model is loaded.", ready ? 1 : 0);
	metric(&b, "inflight_requests", "gauge", "HTTP requests being handled.",
	       (double)atomic_load(&s->inflight));
	if (ready) {
		sb_sched_stats st;
		sb_sched_stats_get(s->sched, &st);
		metric(&b, "queue_depth", "gauge", "Sequences waiting for a slot.", (double)st.pending);
		metric(&b, "slots_busy", "gauge", "Slots decoding a sequence.", (double)st.running);
		metric(&b, "slots_total", "gauge", "Slots (--parallel).", (double)st.slots);
		serve_cache_stats cs;
		serve_cache_stats_get(s->cache, &cs);
		metric(&b, "cache_hits_total", "counter", "Requests that started from a cached state.",
		       (double)cs.hits);
		metric(&b, "cache_misses_total", "counter", "Requests that found no cached prefix.",
		       (double)cs.misses);
		metric(&b, "cache_entries", "gauge", "States in the cache.", (double)cs.entries);
		metric(&b, "cache_bytes", "gauge", "Bytes the cache holds.", (double)cs.bytes);
		metric(&b, "cache_max_bytes", "gauge", "The cache's bound (--cache-bytes).",
		       (double)cs.max_bytes);
		metric(&b, "cache_evictions_total", "counter", "States evicted.", (double)cs.evictions);
	}
	if (b.oom) {
		free(b.p);
		return MHD_NO;
	}
	return queue_buf(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len,
	                 NULL);
}

/* Compares in time that depends on the key's length only. */
static bool key_matches(const char *want, const char *got)
{
	size_t lw = strlen(want), lg = strlen(got);
	volatile unsigned char d = lw != lg;
	for (size_t i = 0; i < lw; i++)
		d |= (unsigned char)want[i] ^ (unsigned char)(i < lg ? got[i] : 0);
	return d == 0;
}

static int route_of(const char *url)
{
	if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions"))
		return ROUTE_COMPLETIONS;
	if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions"))
		return ROUTE_CHAT;
	if (!strcmp(url, "/v1/models") || !strcmp(url, "/models"))
		return ROUTE_MODELS;
	if (!strcmp(url, "/health") || !strcmp(url, "/v1/health"))
		return ROUTE_HEALTH;
	if (!strcmp(url, "/metrics"))
		return ROUTE_METRICS;
	if (!strcmp(url, "/tokenize"))
		return ROUTE_TOKENIZE;
	if (!strcmp(url, "/detokenize"))
		return ROUTE_DETOKENIZE;
	return ROUTE_OTHER;
}

static enum MHD_Result dispatch(conn *c, const char *method)
{
	serve_server *s = c->s;
	bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	bool post = !strcmp(method, "POST");
	if (c->route == ROUTE_HEALTH) {
		if (!get)
			return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request_error", NULL,
			                  NULL, "/health: expected GET");
		bool ready = atomic_load(&s->ready), draining = atomic_load(&s->draining);
		const char *st = draining ? "shutting down" : ready ? "ok" : "loading model";
		unsigned code = ready && !draining ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
		return queue_json(c, code, json_pack("{s:s}", "status", st),
		                  code == MHD_HTTP_OK ? NULL : "1");
	}
	if (s->o.api_key) {
		const char *h = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND,
		                                            MHD_HTTP_HEADER_AUTHORIZATION);
		if (!h || strncmp(h, "Bearer ", 7) || !key_matches(s->o.api_key, h + 7))
			return send_error(c, MHD_HTTP_UNAUTHORIZED, "invalid_request_error", NULL,
			                  "invalid_api_key",
			                  "a valid API key is needed: send 'Authorization: Bearer <key>'");
	}
	if (c->route == ROUTE_OTHER)
		return send_error(c, MHD_HTTP_NOT_FOUND, "invalid_request_error", NULL, "not_found",
		                  "no route for %s %.200s", method, c->url);
	bool wants_get = c->route == ROUTE_MODELS || c->route == ROUTE_METRICS;
	if ((wants_get && !get) || (!wants_get && !post))
		return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request_error", NULL, NULL,
		                  "this route expects %s", wants_get ? "GET" : "POST");
	if (c->route == ROUTE_METRICS)
		return metrics(c);
	if (!atomic_load(&s->ready))
		return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, "loading",
		                  "the model is still loading");
	if (c->too_big)
		return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
		                  "request_too_large", "the request body is larger than %zu bytes",
		                  s->o.max_body);
	switch (c->route) {
	case ROUTE_MODELS: return models(c);
	case ROUTE_TOKENIZE: return tokenize(c);
	case ROUTE_DETOKENIZE: return detokenize(c);
	case ROUTE_CHAT: return generate(c, true);
	default: return generate(c, false);
	}
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **ctx)
{
	(void)version;
	serve_server *s = cls;
	conn *c = *ctx;
	if (!c) {
		if (!(c = calloc(1, sizeof *c)))
			return MHD_NO;
		c->s = s;
		c->mc = mc;
		c->route = route_of(url);
		c->url = url;
		c->counted = true;
		atomic_fetch_add(&s->inflight, 1);
		*ctx = c;
		pthread_mutex_lock(&s->met.mu);
		s->met.requests[c->route]++;
		pthread_mutex_unlock(&s->met.mu);
		const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND,
		                                             MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl && strtoull(cl, NULL, 10) > s->o.max_body) {
			/* Answered before the body is read (libmicrohttpd then closes
			 * the connection instead of reading it). */
			c->too_big = true;
			return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
			                  "request_too_large", "the request body is larger than %zu bytes",
			                  s->o.max_body);
		}
		return MHD_YES;
	}
	if (*upload_size) {
		if (!c->too_big && c->len + *upload_size <= s->o.max_body) {
			if (c->len + *upload_size + 1 > c->cap) {
				size_t cap = c->cap ? c->cap : 4096;
				while (cap < c->len + *upload_size + 1)
					cap *= 2;
				char *p = realloc(c->body, cap);
				if (!p)
					return MHD_NO;
				c->body = p;
				c->cap = cap;
			}
			memcpy(c->body + c->len, upload, *upload_size);
			c->len += *upload_size;
		} else {
			c->too_big = true;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	return dispatch(c, method);
}

/* One line per generation request, when its connection is done with it. */
static void log_job(conn *c, enum MHD_RequestTerminationCode why)
{
	serve_job *j = c->job;
	pthread_mutex_lock(&j->mu);
	const char *fin = j->cancel == SERVE_CANCEL_CLIENT  ? "client gone"
	                  : j->cancel == SERVE_CANCEL_TIMEOUT ? "timeout"
	                                                      : sb_finish_name(j->finish);
	serve_log("%s %s: %s%s, prompt %zu tokens (%zu cached), completion %zu, ttft %.1f ms, "
	          "%.1f ms in all",
	          c->id, route_names[c->route], fin,
	          why == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed)",
	          j->prompt_tokens + j->cached_tokens, j->cached_tokens, j->completion_tokens,
	          j->t_first ? (j->t_first - j->t_start) * 1e3 : 0.0,
	          (cli_now() - j->t_start) * 1e3);
	pthread_mutex_unlock(&j->mu);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **ctx,
                         enum MHD_RequestTerminationCode why)
{
	(void)mc;
	(void)why;
	serve_server *s = cls;
	conn *c = *ctx;
	if (!c)
		return;
	if (c->job) {
		/* A job still running has lost its client: end it, then log it. */
		serve_job_cancel(c->job, SERVE_CANCEL_CLIENT);
		pthread_mutex_lock(&c->job->mu);
		while (!c->job->done)
			pthread_cond_wait(&c->job->cv, &c->job->mu);
		pthread_mutex_unlock(&c->job->mu);
		log_job(c, why);
	}
	serve_job_release(c->job);
	if (c->counted)
		atomic_fetch_sub(&s->inflight, 1);
	free(c->body);
	free(c->out);
	free(c);
	*ctx = NULL;
}

int serve_http_start(serve_server *s)
{
	struct addrinfo hints = {0}, *ai = NULL;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	char port[16];
	snprintf(port, sizeof port, "%d", s->o.port);
	int g = getaddrinfo(s->o.host, port, &hints, &ai);
	if (g != 0) {
		cli_error("serve: --host '%s': %s", s->o.host, gai_strerror(g));
		return CLI_EXIT_USAGE;
	}
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
	                 MHD_USE_ITC;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* A connection may sit in a handler for a whole request: the idle
	 * limit must not cut it. */
	unsigned idle = (unsigned)(s->o.timeout_s + 30);
	s->httpd = MHD_start_daemon(flags, (uint16_t)s->o.port, NULL, NULL, on_request, s,
	                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
	                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->o.max_connections,
	                            MHD_OPTION_CONNECTION_TIMEOUT, idle,
	                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
	                            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
	                            MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!s->httpd) {
		cli_error("serve: cannot listen on %s:%d: %s", s->o.host, s->o.port,
		          errno ? strerror(errno) : "libmicrohttpd refused to start");
		return CLI_EXIT_IO;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->httpd, MHD_DAEMON_INFO_BIND_PORT);
	s->bound_port = di ? di->port : s->o.port;
	return 0;
}

void serve_http_quiesce(serve_server *s)
{
	if (!s->httpd)
		return;
	MHD_socket fd = MHD_quiesce_daemon(s->httpd);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
}

void serve_http_stop(serve_server *s)
{
	if (s->httpd)
		MHD_stop_daemon(s->httpd);
	s->httpd = NULL;
}
