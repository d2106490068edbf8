/* sampler.c - the sampling chain: logit bias, penalties over the last N
 * accepted tokens, then either argmax (temp 0) or top-k, top-p, min-p,
 * temperature and a draw from the sampler's own RNG.
 *
 * The order follows llama.cpp's default chain (bias, penalties, top-k,
 * top-p, min-p, temperature, draw): the truncations look at the
 * distribution at temperature 1, and temperature only reshapes what is
 * left. Every buffer is allocated in sb_sampler_new, so sampling a token
 * allocates nothing. Ties between equal logits go to the lower id, which
 * keeps the result independent of qsort's order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct candidate {
	int32_t id;
	float logit;
} candidate;

struct sb_sampler {
	sb_sampler_params p;      /* bias pointers below replace the caller's */
	int n_vocab;              /* V */
	int32_t *bias_ids;        /* (n_bias) */
	float *bias_values;       /* (n_bias) */
	int32_t *history;         /* (repeat_last_n) ring of accepted tokens */
	size_t hist_len;          /* valid entries, <= repeat_last_n */
	size_t hist_pos;          /* next slot to write */
	uint32_t *counts;         /* (V) occurrences of each id in the ring */
	uint32_t *seen;           /* (V) stamp: penalty already applied */
	uint32_t stamp;
	candidate *cand;          /* (V) */
	double *prob;             /* (V) probabilities of cand, same order */
	uint64_t rng[4];          /* xoshiro256** state */
};

/* splitmix64: spreads any seed (0 included) into a full xoshiro state. */
static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4])
{
	return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

sb_sampler_params sb_sampler_default_params(void)
{
	sb_sampler_params p = {
		.temp = 0.8f,
		.top_k = 40,
		.top_p = 0.95f,
		.min_p = 0.05f,
		.repeat_penalty = 1.0f,
		.repeat_last_n = 64,
		.presence_penalty = 0.0f,
		.frequency_penalty = 0.0f,
		.seed = 0,
		.bias_ids = NULL,
		.bias_values = NULL,
		.n_bias = 0,
	};
	return p;
}

#define MAX_REPEAT_LAST_N (1 << 20)

static int validate(const sb_sampler_params *p, int n_vocab, sb_error *err)
{
	if (n_vocab <= 0)
		return sb_error_set(err, SB_ERR_ARG, "sampler: n_vocab is %d, expected at least 1", n_vocab);
	if (!isfinite(p->temp) || p->temp < 0)
		return sb_error_set(err, SB_ERR_ARG, "sampler: temp is %g, expected a finite number >= 0", p->temp);
	if (!(p->top_p > 0 && p->top_p <= 1))
		return sb_error_set(err, SB_ERR_ARG, "sampler: top_p is %g, expected a number in (0, 1]", p->top_p);
	if (!(p->min_p >= 0 && p->min_p <= 1))
		return sb_error_set(err, SB_ERR_ARG, "sampler: min_p is %g, expected a number in [0, 1]", p->min_p);
	if (!isfinite(p->repeat_penalty) || p->repeat_penalty <= 0)
		return sb_error_set(err, SB_ERR_ARG, "sampler: repeat_penalty is %g, expected a finite number > 0",
		                    p->repeat_penalty);
	if (p->repeat_last_n < 0 || p->repeat_last_n > MAX_REPEAT_LAST_N)
		return sb_error_set(err, SB_ERR_ARG, "sampler: repeat_last_n is %d, expected 0 to %d",
		                    p->repeat_last_n, MAX_REPEAT_LAST_N);
	if (!isfinite(p->presence_penalty))
		return sb_error_set(err, SB_ERR_ARG, "sampler: presence_penalty is %g, expected a finite number",
		                    p->presence_penalty);
	if (!isfinite(p->frequency_penalty))
		return sb_error_set(err, SB_ERR_ARG, "sampler: frequency_penalty is %g, expected a finite number",
		                    p->frequency_penalty);
	if (p->n_bias && (!p->bias_ids || !p->bias_values))
		return sb_error_set(err, SB_ERR_ARG, "sampler: n_bias is %zu but the bias arrays are NULL", p->n_bias);
	for (size_t i = 0; i < p->n_bias; i++) {
		if (p->bias_ids[i] < 0 || p->bias_ids[i] >= n_vocab)
			return sb_error_set(err, SB_ERR_ARG, "sampler: logit bias id %d is out of range (expected 0 to %d)",
			                    (int)p->bias_ids[i], n_vocab - 1);
		/* -inf bans a token; +inf or NaN would make every other token
		 * meaningless, which is never what a bias means. */
		float v = p->bias_values[i];
		if (isnan(v) || v == INFINITY)
			return sb_error_set(err, SB_ERR_ARG, "sampler: logit bias for id %d is %g, expected a finite number or -inf",
			                    (int)p->bias_ids[i], v);
	}
	return SB_OK;
}

sb_sampler *sb_sampler_new(const sb_sampler_params *p, int n_vocab, sb_error *err)
{
	sb_sampler *s = NULL;
	if (!p) {
		sb_error_set(err, SB_ERR_ARG, "sampler: params is NULL");
		goto fail;
	}
	if (validate(p, n_vocab, err) < 0)
		goto fail;
	s = calloc(1, sizeof *s);
	if (!s)
		goto nomem;
	s->p = *p;
	s->n_vocab = n_vocab;
	size_t V = (size_t)n_vocab, bytes;
	if (p->n_bias) {
		if (!sb_size_mul(p->n_bias, sizeof *s->bias_ids, &bytes) ||
		    !(s->bias_ids = malloc(bytes)))
			goto nomem;
		if (!sb_size_mul(p->n_bias, sizeof *s->bias_values, &bytes) ||
		    !(s->bias_values = malloc(bytes)))
			goto nomem;
		memcpy(s->bias_ids, p->bias_ids, p->n_bias * sizeof *s->bias_ids);
		memcpy(s->bias_values, p->bias_values, p->n_bias * sizeof *s->bias_values);
	}
	s->p.bias_ids = s->bias_ids;
	s->p.bias_values = s->bias_values;
	if (p->repeat_last_n > 0 &&
	    !(s->history = malloc((size_t)p->repeat_last_n * sizeof *s->history)))
		goto nomem;
	if (!(s->counts = calloc(V, sizeof *s->counts)) ||
	    !(s->seen = calloc(V, sizeof *s->seen)) ||
	    !sb_size_mul(V, sizeof *s->cand, &bytes) || !(s->cand = malloc(bytes)) ||
	    !sb_size_mul(V, sizeof *s->prob, &bytes) || !(s->prob = malloc(bytes)))
		goto nomem;
	sb_sampler_reset(s, p->seed);
	return s;
nomem:
	sb_error_set(err, SB_ERR_NOMEM, "sampler: out of memory for a vocabulary of %d", n_vocab);
fail:
	sb_sampler_free(s);
	return NULL;
}

void sb_sampler_free(sb_sampler *s)
{
	if (!s)
		return;
	free(s->bias_ids);
	free(s->bias_values);
	free(s->history);
	free(s->counts);
	free(s->seen);
	free(s->cand);
	free(s->prob);
	free(s);
}

void sb_sampler_reset(sb_sampler *s, uint64_t seed)
{
	s->p.seed = seed;
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&x);
	memset(s->counts, 0, (size_t)s->n_vocab * sizeof *s->counts);
	memset(s->seen, 0, (size_t)s->n_vocab * sizeof *s->seen);
	s->stamp = 0;
	s->hist_len = 0;
	s->hist_pos = 0;
}

void sb_sampler_accept(sb_sampler *s, int32_t token)
{
	size_t n = (size_t)s->p.repeat_last_n;
	if (n == 0 || token < 0 || token >= s->n_vocab)
		return;
	if (s->hist_len == n)
		s->counts[s->history[s->hist_pos]]--;
	else
		s->hist_len++;
	s->history[s->hist_pos] = token;
	s->counts[token]++;
	s->hist_pos = (s->hist_pos + 1) % n;
}

static bool has_penalties(const sb_sampler_params *p)
{
	return p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f ||
	       p->frequency_penalty != 0.0f;
}

static void apply_penalties(sb_sampler *s, float *logits)
{
	const sb_sampler_params *p = &s->p;
	if (!has_penalties(p))
		return;
	/* A fresh stamp marks the ids already penalized in this call, so a
	 * token that occurs several times is penalized once (by its count). */
	if (++s->stamp == 0) {
		memset(s->seen, 0, (size_t)s->n_vocab * sizeof *s->seen);
		s->stamp = 1;
	}
	for (size_t i = 0; i < s->hist_len; i++) {
		int32_t t = s->history[i];
		if (s->seen[t] == s->stamp)
			continue;
		s->seen[t] = s->stamp;
		float l = logits[t];
		if (l > 0)
			l /= p->repeat_penalty;
		else
			l *= p->repeat_penalty;
		l -= p->presence_penalty + p->frequency_penalty * (float)s->counts[t];
		logits[t] = l;
	}
}

/* NaN logits count as impossible tokens. */
static float clean(float l)
{
	return isnan(l) ? -INFINITY : l;
}

/* The first id of the largest logit. The largest value first, in 8
 * independent lanes that the compiler can keep in vector registers (a
 * NaN never compares greater, so it never wins), then the first id that
 * holds it: the same id as one pass keeping the first strict maximum. */
static int32_t argmax(const float *logits, int n)
{
	float m[8];
	for (int j = 0; j < 8; j++)
		m[j] = -INFINITY;
	int i = 0;
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++) {
			float v = logits[i + j];
			m[j] = v > m[j] ? v : m[j];
		}
	for (; i < n; i++)
		m[0] = logits[i] > m[0] ? logits[i] : m[0];
	float bv = m[0];
	for (int j = 1; j < 8; j++)
		bv = m[j] > bv ? m[j] : bv;
	for (i = 0; i < n; i++)
		if (clean(logits[i]) == bv)
			return i;
	return 0;
}

/* Higher logit first; equal logits by lower id. */
static int cand_cmp(const void *a, const void *b)
{
	const candidate *x = a, *y = b;
	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/* Moves the k best candidates (by cand_cmp) to the front, in order. A
 * bounded max-first insertion keeps this O(n k) for the small k people
 * use, without sorting the whole vocabulary. */
static void select_top_k(candidate *c, size_t n, size_t k)
{
	size_t kept = 0;
	for (size_t i = 0; i < n; i++) {
		candidate x = c[i];
		if (kept == k && cand_cmp(&x, &c[k - 1]) >= 0)
			continue;
		size_t j = kept < k ? kept++ : k - 1;
		while (j > 0 && cand_cmp(&x, &c[j - 1]) < 0) {
			c[j] = c[j - 1];
			j--;
		}
		c[j] = x;
	}
}

static int32_t pick(sb_sampler *s, const float *logits);

int32_t sb_sampler_sample(sb_sampler *s, float *logits)
{
	const sb_sampler_params *p = &s->p;
	for (size_t i = 0; i < p->n_bias; i++)
		logits[p->bias_ids[i]] += p->bias_values[i];
	apply_penalties(s, logits);
	return pick(s, logits);
}

int32_t sb_sampler_sample_from(sb_sampler *s, const float *logits, float *work)
{
	if (s->p.n_bias || has_penalties(&s->p)) {
		memcpy(work, logits, (size_t)s->n_vocab * sizeof *work);
		return sb_sampler_sample(s, work);
	}
	return pick(s, logits);
}

/* The token from logits after the bias and penalties: argmax at
 * temperature 0, else the truncations and a draw. Reads logits only. */
static int32_t pick(sb_sampler *s, const float *logits)
{
	const sb_sampler_params *p = &s->p;
	if (p->temp == 0.0f)
		return argmax(logits, s->n_vocab);

	/* Candidates: every token with a finite logit. */
	size_t n = 0;
	for (int i = 0; i < s->n_vocab; i++) {
		float l = clean(logits[i]);
		if (l == -INFINITY)
			continue;
		s->cand[n].id = i;
		s->cand[n].logit = l;
		n++;
	}
	if (n == 0)
		return argmax(logits, s->n_vocab);

	if (p->top_k > 0 && (size_t)p->top_k < n) {
		select_top_k(s->cand, n, (size_t)p->top_k);
		n = (size_t)p->top_k;
	} else if (p->top_p < 1.0f) {
		qsort(s->cand, n, sizeof *s->cand, cand_cmp);
	} else {
		/* min-p and the draw do not need an order, only the maximum. */
		size_t best = 0;
		for (size_t i = 1; i < n; i++)
			if (cand_cmp(&s->cand[i], &s->cand[best]) < 0)
				best = i;
		candidate t = s->cand[0];
		s->cand[0] = s->cand[best];
		s->cand[best] = t;
	}

	/* Probabilities at temperature 1 (cand[0] holds the maximum). */
	float lmax = s->cand[0].logit;
	double sum = 0;
	for (size_t i = 0; i < n; i++) {
		s->prob[i] = exp((double)s->cand[i].logit - lmax);
		sum += s->prob[i];
	}

	if (p->top_p < 1.0f) {
		/* The shortest prefix whose mass reaches top_p; never empty. */
		double cum = 0, target = (double)p->top_p * sum;
		size_t keep = n;
		for (size_t i = 0; i < n; i++) {
			cum += s->prob[i];
			if (cum >= target) {
				keep = i + 1;
				break;
			}
		}
		n = keep;
	}

	if (p->min_p > 0.0f) {
		/* p_i >= min_p * p_max; the maximum (prob 1 unnormalized) always
		 * passes. The relation is unchanged by renormalization, so it
		 * does not matter that top-p removed mass. */
		double thr = (double)p->min_p;
		size_t w = 0;
		for (size_t i = 0; i < n; i++) {
			if (s->prob[i] >= thr || i == 0) {
				s->cand[w] = s->cand[i];
				s->prob[w] = s->prob[i];
				w++;
			}
		}
		n = w;
	}

	/* Temperature, then a draw. */
	sum = 0;
	for (size_t i = 0; i < n; i++) {
		s->prob[i] = exp(((double)s->cand[i].logit - lmax) / p->temp);
		sum += s->prob[i];
	}
	double r = rng_uniform(s->rng) * sum, cum = 0;
	for (size_t i = 0; i < n; i++) {
		cum += s->prob[i];
		if (r < cum)
			return s->cand[i].id;
	}
	/* Rounding can leave r just above the last sum. */
	return s->cand[n - 1].id;
}
