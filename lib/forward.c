/*
 * forward.c - prefill and decode: the backend-independent orchestration.
 *
 * Checks the arguments, cuts a call into blocks of rows (backend.h: either
 * consecutive tokens of one state, or one token of each of several
 * distinct states), gives each row its position, and runs each block
 * through the context's backend: embed, every layer, the logits asked
 * for, sync. The arithmetic is the backend's (lib/cpu/ for the CPU).
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

struct sb_ctx {
	const sb_model *m;
	const sb_backend *be;
	sb_bctx *b;
	int device;
	char where[24];       // "cpu", "cuda:0"
	sb_backend_info info; // max_rows, n_threads
	float act_bias;
	size_t max_batch;
	/* the current block's rows: */
	sb_state **rs;        // (max_rows) state of each row
	int64_t *pos;         // (max_rows) raw position of each row's token
	int32_t *tok;         // (max_rows) tokens of a sb_prefill_batch block
	int *sel;             // (max_rows) rows whose logits are wanted
};

sb_ctx_params sb_ctx_default_params(void)
{
	return (sb_ctx_params){.n_threads = 0, .act_bias = 0.0f, .max_batch = 512, .device = NULL};
}

sb_ctx *sb_ctx_new(const sb_model *m, const sb_ctx_params *p, sb_error *err)
{
	sb_ctx_params dp = sb_ctx_default_params();
	if (!p)
		p = &dp;
	if (p->max_batch < 1) {
		sb_error_set(err, SB_ERR_ARG, "max_batch is 0, expected at least 1");
		return NULL;
	}
	int device;
	const sb_backend *be = sb_backend_find(p->device, &device, err);
	if (!be)
		return NULL;
	sb_ctx *x = calloc(1, sizeof *x);
	if (!x) {
		sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a context");
		return NULL;
	}
	x->m = m;
	x->be = be;
	x->device = device;
	x->act_bias = p->act_bias;
	x->max_batch = p->max_batch;
	sb_backend_device_name(be, device, x->where, sizeof x->where);
	if (be->ctx_new(m, p, device, &x->b, &x->info, err) < 0) {
		free(x);
		return NULL;
	}
	if ((size_t)x->info.max_rows < x->max_batch)
		x->max_batch = (size_t)x->info.max_rows;
	x->rs = calloc((size_t)x->info.max_rows, sizeof *x->rs);
	x->pos = calloc((size_t)x->info.max_rows, sizeof *x->pos);
	x->tok = calloc((size_t)x->info.max_rows, sizeof *x->tok);
	x->sel = calloc((size_t)x->info.max_rows, sizeof *x->sel);
	if (!x->rs || !x->pos || !x->tok || !x->sel) {
		sb_ctx_free(x);
		sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a context");
		return NULL;
	}
	return x;
}

void sb_ctx_free(sb_ctx *x)
{
	if (!x)
		return;
	x->be->ctx_free(x->b);
	free(x->rs);
	free(x->pos);
	free(x->tok);
	free(x->sel);
	free(x);
}

const sb_model *sb_ctx_model(const sb_ctx *x) { return x->m; }
void sb_ctx_set_act_bias(sb_ctx *x, float b) { x->act_bias = b; }
float sb_ctx_act_bias(const sb_ctx *x) { return x->act_bias; }
int sb_ctx_threads(const sb_ctx *x) { return x->info.n_threads; }
size_t sb_ctx_max_batch(const sb_ctx *x) { return x->max_batch; }
const char *sb_ctx_device(const sb_ctx *x) { return x->where; }
const char *sb_ctx_device_name(const sb_ctx *x) { return x->info.device_name; }

sb_state *sb_ctx_state_new(sb_ctx *x, sb_error *err)
{
	return sb_state_new_on(x->m, x->be, x->device, err);
}

static int check_tokens(const sb_model *m, const int32_t *tokens, size_t T, sb_error *err)
{
	for (size_t i = 0; i < T; i++)
		if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
			return sb_error_set(err, SB_ERR_ARG,
			                    "token %zu is id %d, outside the vocabulary [0, %d)", i,
			                    (int)tokens[i], m->cfg.vocab_size);
	return 0;
}

static int check_state(const sb_ctx *x, const sb_state *s, const char *which, sb_error *err)
{
	if (s->m != x->m)
		return sb_error_set(err, SB_ERR_ARG, "%s belongs to another model than the context",
		                    which);
	if (s->be != x->be || s->device != x->device)
		return sb_error_set(err, SB_ERR_ARG,
		                    "%s lives on %s, the context computes on %s (sb_state_copy moves it)",
		                    which, s->where, x->where);
	return 0;
}

/* One block through the backend: embed, the layers, the logits of the
 * n_sel rows x->sel into `logits` (n_sel, V), sync. Its rows' act and
 * hidden land at rows row0.. of out (sb_outputs' indexing). */
static int run_block(sb_ctx *x, const sb_rows *r, const sb_outputs *out, size_t row0,
                     int n_sel, float *logits, sb_error *err)
{
	const sb_config *c = &x->m->cfg;
	const size_t D = (size_t)c->embed_dim;
	int rc = x->be->embed(x->b, r, err);
	for (int l = 0; rc == 0 && l < c->layers; l++) {
		uint8_t *act = NULL;
		float *hidden = NULL;
		if (out && out->act)
			act = out->act + (size_t)l * out->stride + out->offset + row0;
		if (out && out->hidden)
			hidden = out->hidden + ((size_t)l * out->stride + out->offset + row0) * D;
		rc = x->be->layer(x->b, r, l, act, hidden, err);
	}
	if (rc == 0 && n_sel > 0)
		rc = x->be->logits(x->b, r, x->sel, n_sel, logits, err);
	if (rc == 0 && x->be->sync)
		rc = x->be->sync(x->b, err);
	return rc;
}

/* x->sel = first, first+1, ..., first+n-1. */
static void select_rows(sb_ctx *x, int first, int n)
{
	for (int i = 0; i < n; i++)
		x->sel[i] = first + i;
}

int sb_prefill(sb_ctx *x, sb_state *s, const int32_t *tokens, size_t T,
               const sb_outputs *out, sb_error *err)
{
	int rc = check_state(x, s, "the state", err);
	if (rc == 0)
		rc = check_tokens(x->m, tokens, T, err);
	if (rc < 0)
		return rc;
	const size_t R = (size_t)x->info.max_rows;
	float *all = out && out->logits ? out->logits + out->offset * (size_t)x->m->cfg.vocab_size
	                                : NULL;
	for (size_t t0 = 0; t0 < T; t0 += R) {
		int n = T - t0 < R ? (int)(T - t0) : (int)R;
		for (int t = 0; t < n; t++) {
			x->rs[t] = s;
			x->pos[t] = (int64_t)s->n_tokens + t;
		}
		s->n_tokens += (uint64_t)n;
		sb_rows r = {.T = n, .states = x->rs, .tokens = tokens + t0, .pos = x->pos,
		             .one_state = true, .distinct = n == 1, .act_bias = x->act_bias};
		bool last_block = t0 + (size_t)n == T;
		float *last = last_block && out ? out->last_logits : NULL;
		int n_sel = 0;
		float *dst = NULL;
		if (all) {
			select_rows(x, 0, n);
			n_sel = n;
			dst = all + t0 * (size_t)x->m->cfg.vocab_size;
		} else if (last) {
			select_rows(x, n - 1, 1);
			n_sel = 1;
			dst = last;
		}
		rc = run_block(x, &r, out, t0, n_sel, dst, err);
		if (rc < 0)
			return rc;
		if (all && last)
			memcpy(last, dst + (size_t)(n - 1) * x->m->cfg.vocab_size,
			       (size_t)x->m->cfg.vocab_size * sizeof(float));
	}
	return 0;
}

int sb_decode(sb_ctx *x, sb_state *s, int32_t token, float *logits, sb_error *err)
{
	sb_outputs out = {.last_logits = logits};
	return sb_prefill(x, s, &token, 1, &out, err);
}

int sb_decode_batch(sb_ctx *x, sb_state *const *states, const int32_t *tokens, size_t B,
                    float *logits, sb_error *err)
{
	if (B > x->max_batch)
		return sb_error_set(err, SB_ERR_ARG, "batch of %zu sequences, at most %zu", B,
		                    x->max_batch);
	int rc = check_tokens(x->m, tokens, B, err);
	if (rc < 0)
		return rc;
	for (size_t b = 0; b < B; b++) {
		char which[48];
		snprintf(which, sizeof which, "state %zu", b);
		if ((rc = check_state(x, states[b], which, err)) < 0)
			return rc;
	}
	/* The same state twice in a batch is allowed: its tokens are read in
	 * order. The batch is cut before each repeat, so that every block's
	 * states are distinct. */
	for (size_t b0 = 0; b0 < B;) {
		size_t n = 0;
		for (; b0 + n < B; n++) {
			bool repeat = false;
			for (size_t a = b0; a < b0 + n && !repeat; a++)
				repeat = states[a] == states[b0 + n];
			if (repeat)
				break;
			x->rs[n] = states[b0 + n];
			x->pos[n] = (int64_t)states[b0 + n]->n_tokens;
			states[b0 + n]->n_tokens++;
		}
		sb_rows r = {.T = (int)n, .states = x->rs, .tokens = tokens + b0, .pos = x->pos,
		             .one_state = n == 1, .distinct = true, .act_bias = x->act_bias};
		select_rows(x, 0, (int)n);
		rc = run_block(x, &r, NULL, 0, logits ? (int)n : 0,
		               logits ? logits + b0 * (size_t)x->m->cfg.vocab_size : NULL, err);
		if (rc < 0)
			return rc;
		b0 += n;
	}
	return 0;
}

int sb_prefill_batch(sb_ctx *x, sb_state *const *states, const int32_t *const *tokens,
                     const size_t *n, size_t B, float *last_logits, sb_error *err)
{
	int rc = 0;
	for (size_t i = 0; i < B && rc == 0; i++) {
		char which[48];
		snprintf(which, sizeof which, "state %zu", i);
		if ((rc = check_state(x, states[i], which, err)) < 0)
			break;
		if (n[i] == 0)
			return sb_error_set(err, SB_ERR_ARG, "sequence %zu has no tokens", i);
		if ((rc = check_tokens(x->m, tokens[i], n[i], err)) < 0) {
			char pre[48];
			snprintf(pre, sizeof pre, "sequence %zu", i);
			sb_error_prefix(err, pre);
			break;
		}
		for (size_t j = 0; j < i; j++)
			if (states[j] == states[i])
				return sb_error_set(err, SB_ERR_ARG,
				                    "states %zu and %zu are the same state", j, i);
	}
	if (rc < 0)
		return rc;
	const size_t V = (size_t)x->m->cfg.vocab_size;
	if (!x->info.runs) {
		/* a backend without RUNS blocks: each prompt as sb_prefill reads
		 * it (its numbers again independent of the others) */
		for (size_t k = 0; k < B; k++) {
			sb_outputs o = {.last_logits = last_logits ? last_logits + k * V : NULL};
			if ((rc = sb_prefill(x, states[k], tokens[k], n[k], &o, err)) < 0)
				return rc;
		}
		return 0;
	}
	const int R = x->info.max_rows;
	size_t i = 0, j = 0; /* next token: tokens[i][j] */
	while (i < B) {
		int T = 0, n_sel = 0;
		size_t first_done = i;
		while (i < B && T < R) {
			size_t take = n[i] - j < (size_t)(R - T) ? n[i] - j : (size_t)(R - T);
			sb_state *s = states[i];
			for (size_t k = 0; k < take; k++, T++) {
				x->rs[T] = s;
				x->tok[T] = tokens[i][j + k];
				x->pos[T] = (int64_t)s->n_tokens + (int64_t)k;
			}
			s->n_tokens += take;
			j += take;
			if (j == n[i]) {
				x->sel[n_sel++] = T - 1;
				i++;
				j = 0;
			}
		}
		/* RUNS, never ONE_STATE or DISTINCT, even with one prompt or one
		 * token per prompt: each sequence's numbers must not depend on the
		 * others (those kinds attend and multiply in other orders). */
		sb_rows r = {.T = T, .states = x->rs, .tokens = x->tok, .pos = x->pos,
		             .one_state = false, .distinct = false, .act_bias = x->act_bias};
		if (T == 1) /* one token alone: as sb_decode reads it */
			r.one_state = r.distinct = true;
		rc = run_block(x, &r, NULL, 0, last_logits ? n_sel : 0,
		               last_logits ? last_logits + first_done * V : NULL, err);
		if (rc < 0)
			return rc;
	}
	return 0;
}
