/*
 * scheduler.h - the generation scheduler: many sequences on one compute
 * context, with continuous batching.
 *
 * A sequence is submitted with its new tokens, an optional start state (a
 * snapshot that already holds a prefix: a shared system prompt, a chat
 * turn, a server's prompt cache), its sampling settings, a token limit and
 * stop strings. The scheduler prefills it into a free slot, then on every
 * step samples one token for each running sequence and reads all of them
 * with one sb_decode_batch call. A sequence that finishes frees its slot,
 * and the next pending sequence takes it at the start of the next step
 * (continuous batching). Text streams out through a per-token callback; when the
 * sequence ends a done callback gets the finish reason, the usage counts
 * and, when asked for, the final state.
 *
 * What a sequence produces does not depend on what else is running: each
 * has its own state, sampler (seeded from its own params), detokenizer and
 * stop matcher, and a batched decode computes what one sb_decode would. So
 * a sequence gives the same tokens alone, in a batch, or refilled into a
 * slot mid-run.
 *
 * Layering: the scheduler is part of lib, so that every front-end
 * (complete, chat, serve) and the tests share one loop built on the public
 * engine API; lib never calls the tokenizer (cmd -> tokenizer -> lib).
 * Text comes from a streaming detokenizer the caller plugs in as a small
 * table of functions (sb_sched_text); tokenizer.h provides the one for an
 * sb_tokenizer (sb_tokenizer_sched_text). Without one the scheduler works
 * on token ids only (no text, no stop strings).
 *
 * Errors, ownership and threads follow seqboat.h (0 or a negative
 * sb_status, message in *err, constructors return NULL, *_free accepts
 * NULL, the library never prints, exits or aborts). Threads:
 *   - One thread at a time "runs" the scheduler: sb_sched_step, _run,
 *     _serve, _free. Every callback is called on that thread, never with an
 *     internal lock held, so a callback may call sb_sched_submit,
 *     sb_sched_cancel and sb_sched_cancel_all (but not step/run/serve/free).
 *   - sb_sched_submit, sb_sched_cancel, sb_sched_stats_get may be called from
 *     any thread at any time, also while another thread runs the scheduler.
 *   - sb_sched_cancel_all and sb_sched_shutdown are async-signal-safe (one
 *     atomic store each): a SIGINT/SIGTERM handler may call them.
 *   - The sb_ctx given to sb_sched_new is used by the running thread during
 *     steps; the caller may use it itself (e.g. sb_prefill) only on that
 *     thread between steps.
 */
#ifndef SEQBOAT_SCHEDULER_H
#define SEQBOAT_SCHEDULER_H

#include "seqboat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------ the detokenizer */

/* A streaming detokenizer, as sb_detok in tokenizer.h: per sequence, ids
 * go in one at a time and only whole characters come out. The scheduler
 * opens one per slot (reusing it for the sequences that slot runs) and
 * closes it in sb_sched_free. */
typedef struct sb_sched_text {
	/* A new decoder, or NULL with *err filled. */
	void *(*open)(void *user, sb_error *err);
	/* Forget pending bytes; at_start: the text begins here (a first
	 * piece's leading space is dropped), else it continues a text. */
	void (*reset)(void *dec, bool at_start);
	/* Appends one id; *out, *out_len: the bytes now complete (valid until
	 * the next call on dec). 0 or a negative sb_status. */
	int (*push)(void *dec, int32_t id, const char **out, size_t *out_len,
	            sb_error *err);
	/* The pending incomplete bytes at the end (as replacements). */
	void (*flush)(void *dec, const char **out, size_t *out_len);
	void (*close)(void *dec);
	void *user;              /* passed to open (e.g. the sb_tokenizer) */
} sb_sched_text;

/* ------------------------------------------------------------ scheduler */

typedef struct sb_sched_params {
	/* Sequences decoded together (slots). 0: sb_ctx_max_batch(ctx).
	 * More than sb_ctx_max_batch(ctx) is SB_ERR_ARG. */
	size_t max_batch;
	/* The end-of-text id that finishes a sequence (SB_FINISH_EOS); -1:
	 * none. */
	int32_t eos_id;
	/* Tokens one sequence prefills per step, so that a long prompt does
	 * not stall the running sequences for its whole prefill. 0: the whole
	 * prompt in the step that admits it. */
	size_t prefill_chunk;
	/* The detokenizer; all members NULL: none (then no text is produced
	 * and stop strings are refused at submit). Copied. */
	sb_sched_text text;
} sb_sched_params;

/* max_batch 0, eos_id -1, prefill_chunk 0, no detokenizer. */
sb_sched_params sb_sched_default_params(void);

typedef struct sb_sched sb_sched;

/* A scheduler running sequences on ctx (borrowed: it must outlive the
 * scheduler). Allocates the slots' states and logits up front; a step then
 * allocates nothing but what a finishing or admitted sequence needs.
 * Caller frees. */
sb_sched *sb_sched_new(sb_ctx *ctx, const sb_sched_params *p, sb_error *err);

/* Finishes every sequence still pending or running as SB_FINISH_CANCELLED
 * (their on_done callbacks run, on the calling thread), then frees. Call it
 * only when no thread runs the scheduler. NULL is a no-op. */
void sb_sched_free(sb_sched *s);

/* ------------------------------------------------------------- sequences */

typedef enum sb_finish {
	SB_FINISH_LENGTH,        /* max_tokens generated */
	SB_FINISH_EOS,           /* the model wrote the end-of-text id */
	SB_FINISH_STOP,          /* a stop string completed (its bytes and what
	                          * follows them are never emitted) */
	SB_FINISH_CANCELLED,     /* sb_sched_cancel / cancel_all / shutdown-free,
	                          * or on_token returned non-zero */
	SB_FINISH_ERROR,         /* see sb_seq_result.error */
} sb_finish;

/* "length", "eos", "stop", "cancelled", "error". */
const char *sb_finish_name(sb_finish f);

typedef struct sb_logprob {
	int32_t token;
	float logprob;           /* natural log of the probability */
} sb_logprob;

#define SB_SCHED_MAX_TOP_LOGPROBS 20

/* What on_token receives; every pointer is valid only during the call. */
typedef struct sb_seq_token {
	uint64_t id;             /* the sequence (as sb_sched_submit gave it) */
	void *user;              /* sb_seq_params.user */
	/* The sampled id, or -1 for the last call of a sequence, which carries
	 * only the bytes held back until the end (made only if there are any). */
	int32_t token;
	size_t index;            /* 0-based position in the completion */
	/* Bytes now safe to emit: whole UTF-8 characters that can no longer be
	 * the start of a stop string. May be empty (len 0) for a token whose
	 * bytes are held back; the concatenation over all calls is the
	 * completion text. Not NUL-terminated. */
	const char *text;
	size_t text_len;
	/* The bytes the detokenizer gave for this token before stop matching
	 * (whole characters; for the last call, its flushed bytes): what the
	 * model wrote, stop strings included. */
	const char *piece;
	size_t piece_len;
	/* With sb_seq_params.logprobs (else NAN / 0): the token's log
	 * probability under the model's distribution (softmax of the logits,
	 * before logit bias, penalties, temperature and truncation), and the
	 * top_logprobs most likely tokens, best first (ties: lower id first). */
	float logprob;
	const sb_logprob *top;   /* (n_top) */
	size_t n_top;
} sb_seq_token;

/* What on_done receives (valid during the call). */
typedef struct sb_seq_result {
	uint64_t id;
	void *user;
	sb_finish finish;
	int stop_index;          /* SB_FINISH_STOP: index into params.stops; else -1 */
	/* Usage. OpenAI's prompt_tokens is prompt_tokens + cached_tokens. */
	size_t prompt_tokens;    /* new tokens prefilled (params.n_tokens) */
	size_t cached_tokens;    /* tokens the start state already held */
	size_t completion_tokens;/* tokens sampled, an end-of-text id not counted */
	/* Seconds: waiting for a slot, prefill, generation. */
	double queue_s, prompt_s, gen_s;
	/* params.final_state, now holding the start state's tokens, the prompt
	 * and every sampled token except an end-of-text id (the token that
	 * completed a stop string included), or NULL when none was asked for
	 * or the sequence ended before its prompt was read (cancelled while
	 * pending, or an error). */
	sb_state *state;
	/* SB_FINISH_ERROR: what went wrong (the code and one line; a final
	 * state that could not be copied out of a device is one). */
	const sb_error *error;
} sb_seq_result;

/* Return 0 to go on; non-zero cancels the sequence (SB_FINISH_CANCELLED;
 * e.g. the client is gone). */
typedef int (*sb_seq_token_fn)(const sb_seq_token *t);
typedef void (*sb_seq_done_fn)(const sb_seq_result *r);

typedef struct sb_seq_params {
	/* New tokens to read after the start state (ids in [0, V)). Copied. */
	const int32_t *tokens;
	size_t n_tokens;
	/* The state to start from (same model), or NULL for an empty one.
	 * Copied at submit: the caller may change or free it afterwards. */
	const sb_state *start;
	/* (V) The prediction after start's last token: needed when n_tokens
	 * is 0 (then the first token is sampled from it), ignored otherwise.
	 * Copied. */
	const float *start_logits;
	/* Tokens the sampler's penalties see before `tokens` (those already in
	 * the start state, e.g. the last repeat_last_n of a conversation).
	 * The sampler then sees `tokens` and every sampled token. Copied. */
	const int32_t *history;
	size_t n_history;
	/* Sampling, seed included. Copied (the logit bias too). */
	sb_sampler_params sampler;
	long max_tokens;         /* tokens to sample at most; -1: no limit */
	bool ignore_eos;         /* keep going past the end-of-text id */
	/* Stop strings (non-empty), matched across token boundaries. Copied. */
	const char *const *stops;
	size_t n_stops;
	/* The detokenizer starts as at the beginning of a text (a reply), not
	 * continuing one (a completion keeps its first piece's space). */
	bool text_at_start;
	/* Report log probabilities in on_token; top_logprobs in
	 * 0..SB_SCHED_MAX_TOP_LOGPROBS alternatives. */
	bool logprobs;
	int top_logprobs;
	/* NULL, or a state of the same model that receives the final state
	 * before on_done (see sb_seq_result.state). The caller must not touch
	 * it between submit and on_done. */
	sb_state *final_state;
	/* NULL, or (V) floats that receive the prediction after final_state's
	 * last token (the logits to continue from), when final_state is
	 * filled. The same rule as final_state. */
	float *final_logits;
	/* Callbacks (either may be NULL), called on the running thread. */
	sb_seq_token_fn on_token;
	sb_seq_done_fn on_done;
	void *user;
} sb_seq_params;

/* max_tokens -1, llama.cpp's sampler defaults, everything else empty. */
sb_seq_params sb_seq_default_params(void);

/* Queues a sequence; it starts at the next step that finds a free slot
 * (sequences start in submission order). Validates everything first
 * (SB_ERR_ARG naming the field: token ids, sampler params, stop strings,
 * no tokens and no start_logits, a start state of another model, after
 * sb_sched_shutdown) and then owns copies of what it needs, so once it
 * returns 0 on_done is called exactly once. *id (may be NULL) receives the
 * sequence's id, unique for the scheduler's life and never 0.
 * Thread-safe; wakes a thread blocked in sb_sched_serve. */
int sb_sched_submit(sb_sched *s, const sb_seq_params *p, uint64_t *id,
                    sb_error *err);

/* Cancels one sequence, pending or running: it finishes at the next step
 * with SB_FINISH_CANCELLED (a token being sampled in this step is still
 * delivered). An unknown or finished id is ignored, so a late cancel is
 * harmless. Thread-safe. */
void sb_sched_cancel(sb_sched *s, uint64_t id);

/* Cancels every sequence submitted before the call (those submitted after
 * it run normally). Async-signal-safe. */
void sb_sched_cancel_all(sb_sched *s);

/* ------------------------------------------------------------------- run */

/* One step: admits pending sequences into free slots (prefilling their
 * tokens, or a chunk of them), samples one token for every running
 * sequence and reads them all with one batched decode, finishing the
 * sequences that are done. Never blocks. Returns how many sequences are
 * still pending or running (>= 0), or a negative sb_status for a failure
 * that is not one sequence's (a sequence's own failure finishes it with
 * SB_FINISH_ERROR and the others go on). */
int sb_sched_step(sb_sched *s, sb_error *err);

/* Steps until no sequence is pending or running; returns 0 or what a step
 * returned. For a command that submits its work (possibly more from its
 * on_done callbacks) and waits for it. */
int sb_sched_run(sb_sched *s, sb_error *err);

/* For a server's scheduler thread: steps while there is work, sleeps while
 * there is none (a submit wakes it at once), and returns 0 once
 * sb_sched_shutdown was called and nothing is pending or running (call
 * sb_sched_cancel_all too to end the running sequences early). */
int sb_sched_serve(sb_sched *s, sb_error *err);

/* Makes sb_sched_serve return when the work in hand is done; later submits
 * fail with SB_ERR_ARG. Async-signal-safe (seen within 100 ms by a serve
 * that sleeps). */
void sb_sched_shutdown(sb_sched *s);

typedef struct sb_sched_stats {
	size_t pending;          /* submitted, waiting for a slot */
	size_t running;          /* in a slot (prefilling or generating) */
	size_t slots;            /* max_batch */
	uint64_t submitted;      /* sequences, over the scheduler's life */
	uint64_t prompt_tokens;  /* tokens prefilled, over the scheduler's life */
	uint64_t completion_tokens; /* tokens sampled (end-of-text ids not counted) */
} sb_sched_stats;

/* The counters now (pending, running and submitted read together; the token
 * counts grow as tokens are prefilled and sampled). Thread-safe. */
void sb_sched_stats_get(sb_sched *s, sb_sched_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* SEQBOAT_SCHEDULER_H */
