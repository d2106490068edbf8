/*
 * model.c - a model directory: config.yaml + model.safetensors, bound to
 * the layout of internal.h with every tensor's presence and shape checked.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define ST_NAME "model.safetensors"

typedef struct binder {
	sb_model *m;
	const sb_st_file *st;
	unsigned char *used;   // (count) tensors bound so far
	float *arena_next;
	float *arena_end;
	uint64_t n_params;
	size_t count_by_dtype[SB_DTYPE_COUNT];
	sb_error *err;
} binder;

static int shape_str(char *buf, size_t cap, const uint64_t *shape, int ndim)
{
	size_t n = 0;
	n += (size_t)snprintf(buf + n, cap - n, "[");
	for (int i = 0; i < ndim && n < cap; i++)
		n += (size_t)snprintf(buf + n, cap - n, "%s%llu", i ? ", " : "",
		                      (unsigned long long)shape[i]);
	if (n < cap)
		snprintf(buf + n, cap - n, "]");
	return 0;
}

/* Finds `name` with exactly `ndim` dims of `shape` in F32/F16/BF16. */
static const sb_tensor *bind_any(binder *b, const char *name, int ndim,
                                 const uint64_t *shape, bool allow_q8)
{
	const sb_tensor *t = sb_st_find(b->st, name);
	char want[128], got[128];
	shape_str(want, sizeof want, shape, ndim);
	if (!t) {
		sb_error_set(b->err, SB_ERR_FORMAT,
		             ST_NAME ": tensor '%s' is missing (expected shape %s, which config.yaml implies)",
		             name, want);
		return NULL;
	}
	bool same = t->ndim == ndim;
	for (int i = 0; same && i < ndim; i++)
		same = t->shape[i] == shape[i];
	if (!same) {
		shape_str(got, sizeof got, t->shape, t->ndim);
		sb_error_set(b->err, SB_ERR_FORMAT,
		             ST_NAME ": tensor '%s' has shape %s, expected %s", name, got, want);
		return NULL;
	}
	if (t->dtype != SB_DTYPE_F32 && t->dtype != SB_DTYPE_F16 && t->dtype != SB_DTYPE_BF16 &&
	    !(allow_q8 && t->dtype == SB_DTYPE_I8)) {
		sb_error_set(b->err, SB_ERR_FORMAT,
		             ST_NAME ": tensor '%s' has dtype %s, expected F32, F16 or BF16%s",
		             name, sb_dtype_name(t->dtype), allow_q8 ? " (or I8 with a q8_scale)" : "");
		return NULL;
	}
	size_t idx = (size_t)(t - sb_st_tensor_at(b->st, 0));
	if (!b->used[idx]) {
		b->used[idx] = 1;
		b->n_params += t->numel;
	}
	return t;
}

static const sb_tensor *bind(binder *b, const char *name, int ndim, const uint64_t *shape)
{
	return bind_any(b, name, ndim, shape, false);
}

/* The index of the first non-finite element of n values of dtype dt at
 * data, or n when all are finite (integer dtypes always are). Chunks are
 * OR-reduced without branches so that a full scan runs at memory speed. */
static size_t first_non_finite(sb_dtype dt, const void *data, size_t n)
{
	if (dt == SB_DTYPE_F32) {
		const uint32_t *u = data;
		for (size_t i = 0; i < n; i += 1024) {
			size_t e = n - i < 1024 ? n - i : 1024;
			uint32_t bad = 0;
			for (size_t k = 0; k < e; k++)
				bad |= ((u[i + k] & 0x7f800000u) == 0x7f800000u);
			if (bad)
				for (size_t k = 0; k < e; k++)
					if ((u[i + k] & 0x7f800000u) == 0x7f800000u)
						return i + k;
		}
	} else if (dt == SB_DTYPE_F16 || dt == SB_DTYPE_BF16) {
		const uint16_t *h = data;
		const uint16_t mask = dt == SB_DTYPE_F16 ? 0x7c00 : 0x7f80;
		for (size_t i = 0; i < n; i += 1024) {
			size_t e = n - i < 1024 ? n - i : 1024;
			uint16_t bad = 0;
			for (size_t k = 0; k < e; k++)
				bad |= (uint16_t)((h[i + k] & mask) == mask);
			if (bad)
				for (size_t k = 0; k < e; k++)
					if ((h[i + k] & mask) == mask)
						return i + k;
		}
	} else if (dt == SB_DTYPE_F64) {
		const uint64_t *d = data;
		for (size_t i = 0; i < n; i++)
			if ((d[i] & UINT64_C(0x7ff0000000000000)) == UINT64_C(0x7ff0000000000000))
				return i;
	}
	return n;
}

static int non_finite_error(sb_error *err, const sb_tensor *t, size_t i)
{
	return sb_error_set(err, SB_ERR_FORMAT,
	                    ST_NAME ": tensor '%s' element %zu is not a finite number (NaN or infinity); expected finite weights",
	                    t->name, i);
}

int sb_model_check_weights(const sb_model *m, sb_error *err)
{
	for (size_t i = 0; i < sb_st_count(m->st); i++) {
		const sb_tensor *t = sb_st_tensor_at(m->st, i);
		size_t bad = first_non_finite(t->dtype, t->data, t->numel);
		if (bad < t->numel) {
			non_finite_error(err, t, bad);
			return sb_error_prefix(err, m->dir);
		}
	}
	return 0;
}

/* A float32 copy of a (small) tensor in the arena. */
static const float *bind_vec(binder *b, const char *name, int ndim, const uint64_t *shape)
{
	const sb_tensor *t = bind(b, name, ndim, shape);
	if (!t)
		return NULL;
	if ((size_t)(b->arena_end - b->arena_next) < t->numel) {
		sb_error_set(b->err, SB_ERR_FORMAT, "internal: model arena too small at '%s'", name);
		return NULL;
	}
	/* These are read whole at load anyway, so they are always checked. */
	size_t bad = first_non_finite(t->dtype, t->data, t->numel);
	if (bad < t->numel) {
		non_finite_error(b->err, t, bad);
		return NULL;
	}
	float *dst = b->arena_next;
	b->arena_next += t->numel;
	sb_widen(t->dtype, t->data, dst, t->numel);
	return dst;
}

static bool bind_mat(binder *b, const char *name, int rows, int cols, sb_mat *out)
{
	uint64_t shape[2] = {(uint64_t)rows, (uint64_t)cols};
	const sb_tensor *t = bind_any(b, name, 2, shape, true);
	if (!t)
		return false;
	out->dtype = t->dtype;
	out->data = t->data;
	out->rows = rows;
	out->cols = cols;
	out->scales = NULL;
	if (t->dtype == SB_DTYPE_I8) {
		/* 8-bit blocks: one F16 scale per SB_Q8_BLOCK weights of a row. */
		char sname[300];
		snprintf(sname, sizeof sname, "%s" SB_Q8_SCALE_SUFFIX, name);
		uint64_t sshape[2] = {(uint64_t)rows, (uint64_t)((cols + SB_Q8_BLOCK - 1) / SB_Q8_BLOCK)};
		const sb_tensor *sc = bind(b, sname, 2, sshape);
		if (!sc)
			return false;
		if (sc->dtype != SB_DTYPE_F16) {
			sb_error_set(b->err, SB_ERR_FORMAT, ST_NAME ": tensor '%s' has dtype %s, expected F16",
			             sname, sb_dtype_name(sc->dtype));
			return false;
		}
		size_t bad = first_non_finite(sc->dtype, sc->data, sc->numel);
		if (bad < sc->numel) {
			non_finite_error(b->err, sc, bad);
			return false;
		}
		b->n_params -= sc->numel; /* scales are not parameters */
		out->scales = sc->data;
		b->count_by_dtype[SB_DTYPE_I8] += sc->nbytes;
	}
	b->count_by_dtype[t->dtype] += t->nbytes;
	return true;
}

static float *arena_take(binder *b, size_t n)
{
	float *p = b->arena_next;
	b->arena_next += n;
	return p;
}

static bool bind_norm(binder *b, const char *prefix, sb_norm_kind kind, bool affine,
                      int D, sb_norm *nm)
{
	char name[256];
	uint64_t d[1] = {(uint64_t)D}, one[1] = {1};
	nm->kind = kind;
	nm->weight = nm->bias = NULL;
	nm->scalar = 1.0f;
	if (!affine)
		return true;
	switch (kind) {
	case SB_NORM_LAYERNORM:
		snprintf(name, sizeof name, "%s.weight", prefix);
		if (!(nm->weight = bind_vec(b, name, 1, d)))
			return false;
		snprintf(name, sizeof name, "%s.bias", prefix);
		return (nm->bias = bind_vec(b, name, 1, d)) != NULL;
	case SB_NORM_RMSNORM:
		snprintf(name, sizeof name, "%s.weight", prefix);
		return (nm->weight = bind_vec(b, name, 1, d)) != NULL;
	case SB_NORM_SCALENORM: {
		snprintf(name, sizeof name, "%s.scalar", prefix);
		const float *s = bind_vec(b, name, 1, one);
		if (!s)
			return false;
		nm->scalar = *s;
		return true;
	}
	}
	return false;
}

static float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

static bool bind_layer(binder *b, int l, sb_layer *ly)
{
	const sb_config *c = &b->m->cfg;
	const uint64_t D = (uint64_t)c->embed_dim, Z = (uint64_t)c->z_dim,
	               H = (uint64_t)c->hidden_dim, N = (uint64_t)c->n_dim;
	char p[128], name[256];
	snprintf(p, sizeof p, "layers.%d.slag_layer", l);
#define NAME(suffix) (snprintf(name, sizeof name, "%s." suffix, p), name)

	snprintf(name, sizeof name, "%s.norm.norm", p);
	if (!bind_norm(b, name, c->norm, true, (int)D, &ly->norm))
		return false;

	uint64_t dn1[3] = {D, N, 1}, dn[2] = {D, N}, d1[1] = {D}, one[1] = {1};
	const float *delta = bind_vec(b, NAME("move.delta"), 3, dn1);
	const float *alpha = delta ? bind_vec(b, NAME("move.alpha"), 3, dn1) : NULL;
	const float *beta = alpha ? bind_vec(b, NAME("move.beta"), 3, dn1) : NULL;
	const float *gamma = beta ? bind_vec(b, NAME("move.gamma"), 2, dn) : NULL;
	const float *omega = gamma ? bind_vec(b, NAME("move.omega"), 1, d1) : NULL;
	const float *temp = omega ? bind_vec(b, NAME("q_router.temp"), 1, one) : NULL;
	if (!temp)
		return false;
	ly->ema_q = arena_take(b, D * N);
	ly->ema_pb = arena_take(b, D * N);
	ly->ema_g = arena_take(b, D * N);
	float scale = sqrtf(1.0f / (float)N);
	for (size_t i = 0; i < D * N; i++) {
		float pp = sigmoidf_(delta[i]), a = sigmoidf_(alpha[i]);
		ly->ema_q[i] = 1.0f - pp * a;
		ly->ema_pb[i] = pp * beta[i];
		ly->ema_g[i] = gamma[i] * scale;
	}
	ly->omega = (float *)omega;
	ly->inv_tau = 1.0f / expf(temp[0]);

	if (!bind_mat(b, NAME("hx_proj.weight"), (int)(2 + D), (int)D, &ly->hx))
		return false;
	uint64_t n2d[1] = {2 + D}, nmx[1] = {Z + 2 * H}, z2[2] = {2, Z};
	if (!(ly->hx_b = bind_vec(b, NAME("hx_proj.bias"), 1, n2d)))
		return false;
	if (!bind_mat(b, NAME("mx_proj.weight"), (int)(Z + 2 * H), (int)D, &ly->mx))
		return false;
	if (!(ly->mx_b = bind_vec(b, NAME("mx_proj.bias"), 1, nmx)))
		return false;
	if (!bind_mat(b, NAME("h_proj.weight"), (int)D, (int)H, &ly->ho))
		return false;
	if (!(ly->ho_b = bind_vec(b, NAME("h_proj.bias"), 1, d1)))
		return false;
	const float *g = bind_vec(b, NAME("gamma"), 2, z2);
	const float *be = g ? bind_vec(b, NAME("beta"), 2, z2) : NULL;
	if (!be)
		return false;
	ly->gq = g;
	ly->gk = g + Z;
	ly->bq = be;
	ly->bk = be + Z;
	ly->rel_bias = NULL;
	if (c->rel_pos == SB_POS_SIMPLE) {
		uint64_t m2[1] = {2 * (uint64_t)c->max_positions - 1};
		if (!(ly->rel_bias = bind_vec(b, NAME("rel_pos_bias.rel_pos_bias"), 1, m2)))
			return false;
	}
#undef NAME
	if (c->ffn_dim > 0) {
		const uint64_t F = (uint64_t)c->ffn_dim;
		uint64_t f1[1] = {F};
		snprintf(p, sizeof p, "layers.%d.nffn", l);
		snprintf(name, sizeof name, "%s.norm.norm", p);
		if (!bind_norm(b, name, c->norm, true, (int)D, &ly->ffn_norm))
			return false;
		snprintf(name, sizeof name, "%s.fc1.weight", p);
		if (!bind_mat(b, name, (int)F, (int)D, &ly->fc1))
			return false;
		snprintf(name, sizeof name, "%s.fc1.bias", p);
		if (!(ly->fc1_b = bind_vec(b, name, 1, f1)))
			return false;
		snprintf(name, sizeof name, "%s.fc2.weight", p);
		if (!bind_mat(b, name, (int)D, (int)F, &ly->fc2))
			return false;
		snprintf(name, sizeof name, "%s.fc2.bias", p);
		if (!(ly->fc2_b = bind_vec(b, name, 1, d1)))
			return false;
	}
	return true;
}

/* Upper bound of the float32 arena: every vector bound plus the derived
 * EMA tables. */
static size_t arena_floats(const sb_config *c)
{
	size_t D = (size_t)c->embed_dim, Z = (size_t)c->z_dim, H = (size_t)c->hidden_dim,
	       N = (size_t)c->n_dim, F = (size_t)(c->ffn_dim > 0 ? c->ffn_dim : 0),
	       M = (size_t)c->max_positions;
	size_t per = 2 * D            /* norm */
	             + 7 * D * N      /* delta alpha beta gamma + 3 derived */
	             + D + 1          /* omega temp */
	             + (2 + D) + (Z + 2 * H) + D /* biases */
	             + 4 * Z          /* gamma beta */
	             + (c->rel_pos == SB_POS_SIMPLE ? 2 * M : 0)
	             + (c->ffn_dim > 0 ? 2 * D + F + D : 0);
	return per * (size_t)c->layers + 2 * D + 16;
}

/* Dimensions are capped by the config reader; the largest products below
 * still get checked so a hostile config cannot wrap a size. */
static int check_sizes(const sb_config *c, sb_error *err)
{
	size_t t;
	size_t D = (size_t)c->embed_dim, Z = (size_t)c->z_dim, H = (size_t)c->hidden_dim,
	       N = (size_t)c->n_dim, L = (size_t)c->layers, W1 = (size_t)c->window + 1;
	if (!sb_size_mul(D, N, &t) || !sb_size_mul(t, 8 * L, &t) ||
	    !sb_size_mul(W1, Z + H + 2, &t) || !sb_size_mul(t, 4 * L, &t) ||
	    !sb_size_mul((size_t)c->vocab_size, D, &t) || !sb_size_mul(t, 4, &t) ||
	    !sb_size_mul(arena_floats(c), sizeof(float), &t))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "config.yaml: architecture sizes overflow this machine's address space");
	return 0;
}

/* A 64-bit multiply-xorshift hash; four independent lanes over the bulk so
 * that hashing a model's weights runs at memory speed. */
static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;
	const uint64_t K = 0x100000001b3ULL;
	uint64_t lane[4] = {h, h ^ 0x9e3779b97f4a7c15ULL, h ^ 0xc2b2ae3d27d4eb4fULL,
	                    h ^ 0x165667b19e3779f9ULL};
	size_t i = 0;
	for (; i + 32 <= n; i += 32)
		for (int k = 0; k < 4; k++) {
			uint64_t w;
			memcpy(&w, s + i + 8 * k, 8);
			lane[k] = (lane[k] ^ w) * K;
			lane[k] ^= lane[k] >> 29;
		}
	h = lane[0] ^ (lane[1] * 3) ^ (lane[2] * 5) ^ (lane[3] * 7);
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, s + i, 8);
		h = (h ^ w) * K;
		h ^= h >> 29;
	}
	for (; i < n; i++)
		h = (h ^ s[i]) * K;
	return h;
}

static uint64_t fingerprint(const sb_model *m)
{
	const sb_config *c = &m->cfg;
	int dims[] = {c->vocab_size, c->embed_dim, c->z_dim, c->hidden_dim, c->n_dim,
	              c->layers, c->window, c->ffn_dim, c->max_positions, (int)c->rel_pos,
	              (int)c->attention, (int)c->norm, (int)c->activation,
	              c->normalize_before, c->affine_final_norm, c->scale_embedding,
	              c->tied_embeddings};
	uint64_t h = hash_bytes(0xcbf29ce484222325ULL, dims, sizeof dims);
	for (size_t i = 0; i < sb_st_count(m->st); i++) {
		const sb_tensor *t = sb_st_tensor_at(m->st, i);
		h = hash_bytes(h, t->name, strlen(t->name));
		h = hash_bytes(h, t->data, t->nbytes);
	}
	return h;
}

static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

sb_model *sb_model_load(const char *dir, sb_error *err)
{
	sb_model *m = calloc(1, sizeof *m);
	char *cfg_path = path_join(dir, "config.yaml");
	char *st_path = path_join(dir, ST_NAME);
	binder b = {0};
	if (!m || !cfg_path || !st_path) {
		sb_error_set(err, SB_ERR_NOMEM, "out of memory loading %s", dir);
		goto fail;
	}
	if (!(m->dir = strdup(dir))) {
		sb_error_set(err, SB_ERR_NOMEM, "out of memory loading %s", dir);
		goto fail;
	}
	if (sb_config_load(cfg_path, &m->cfg, err) < 0)
		goto fail;
	const sb_config *c = &m->cfg;
	if (check_sizes(c, err) < 0) {
		sb_error_prefix(err, dir);
		goto fail;
	}
	if (!(m->st = sb_st_open(st_path, err)))
		goto fail;

	size_t count = sb_st_count(m->st);
	b.m = m;
	b.st = m->st;
	b.err = err;
	size_t nf = arena_floats(c);
	/* The float32 vectors are copies of tensors the file must hold (at
	 * two bytes a value at least) plus three derived (D, N) per layer: a
	 * config whose sizes the file cannot hold is refused before anything
	 * that large is allocated, naming the fields that make it large. */
	size_t derived = 3 * (size_t)c->embed_dim * (size_t)c->n_dim * (size_t)c->layers;
	size_t from_file = nf > derived + 16 ? nf - derived - 16 : 0;
	if (from_file > sb_st_file_size(m->st) / 2) {
		sb_error_set(err, SB_ERR_FORMAT,
		             "config.yaml: embed_dim %d, n_dim %d, hidden_dim %d, z_dim %d and layers %d need %zu bytes of small tensors at least, but " ST_NAME " holds %zu bytes",
		             c->embed_dim, c->n_dim, c->hidden_dim, c->z_dim, c->layers, from_file * 2,
		             sb_st_file_size(m->st));
		goto fail_prefixed;
	}
	b.used = calloc(count ? count : 1, 1);
	m->arena = malloc(nf * sizeof(float));
	m->layers = calloc((size_t)c->layers, sizeof *m->layers);
	if (!b.used || !m->arena || !m->layers) {
		sb_error_set(err, SB_ERR_FORMAT,
		             "config.yaml: embed_dim %d x n_dim %d x layers %d need %zu bytes of float32 vectors, more than this machine can allocate",
		             c->embed_dim, c->n_dim, c->layers, nf * sizeof(float));
		goto fail_prefixed;
	}
	b.arena_next = m->arena;
	b.arena_end = m->arena + nf;

	const int V = c->vocab_size, D = c->embed_dim;
	if (!bind_mat(&b, "embed_tokens.weight", V, D, &m->embed))
		goto fail_prefixed;
	if (c->tied_embeddings) {
		m->out = m->embed;
		/* A writer may store the tied copy too; accept it only if it
		 * really is the same tensor. */
		const sb_tensor *o = sb_st_find(m->st, "output_projection.weight");
		if (o) {
			const sb_tensor *e = sb_st_find(m->st, "embed_tokens.weight");
			if (o->dtype != e->dtype || o->nbytes != e->nbytes ||
			    memcmp(o->data, e->data, o->nbytes) != 0) {
				sb_error_set(err, SB_ERR_FORMAT,
				             ST_NAME ": tensor 'output_projection.weight' differs from 'embed_tokens.weight', but config.yaml says tied_embeddings: true");
				goto fail_prefixed;
			}
			b.used[o - sb_st_tensor_at(m->st, 0)] = 1;
		}
	} else if (!bind_mat(&b, "output_projection.weight", V, D, &m->out)) {
		goto fail_prefixed;
	}
	for (int l = 0; l < c->layers; l++)
		if (!bind_layer(&b, l, &m->layers[l]))
			goto fail_prefixed;
	if (c->normalize_before &&
	    !bind_norm(&b, "final_norm.norm", c->norm, c->affine_final_norm, D, &m->final_norm))
		goto fail_prefixed;

	for (size_t i = 0; i < count; i++) {
		const sb_tensor *t = sb_st_tensor_at(m->st, i);
		if (!b.used[i] && strcmp(t->name, "version") != 0) {
			sb_error_set(err, SB_ERR_FORMAT,
			             ST_NAME ": unknown tensor '%s' (not part of the model config.yaml describes)",
			             t->name);
			goto fail_prefixed;
		}
	}
	m->embed_scale = c->scale_embedding ? sqrtf((float)D) : 1.0f;
	m->n_params = b.n_params;
	m->weight_dtype = SB_DTYPE_F32;
	for (int dt = 0; dt < SB_DTYPE_COUNT; dt++)
		if (b.count_by_dtype[dt] > b.count_by_dtype[m->weight_dtype])
			m->weight_dtype = (sb_dtype)dt;
	free(b.used);
	free(cfg_path);
	free(st_path);
	return m;

fail_prefixed:
	sb_error_prefix(err, dir);
fail:
	free(b.used);
	free(cfg_path);
	free(st_path);
	sb_model_free(m);
	return NULL;
}

void sb_model_free(sb_model *m)
{
	if (!m)
		return;
	sb_st_close(m->st);
	free(m->layers);
	free(m->arena);
	free(m->dir);
	free(m);
}

const sb_config *sb_model_config(const sb_model *m) { return &m->cfg; }
const char *sb_model_dir(const sb_model *m) { return m->dir; }
uint64_t sb_model_n_params(const sb_model *m) { return m->n_params; }
size_t sb_model_file_bytes(const sb_model *m) { return sb_st_file_size(m->st); }
sb_dtype sb_model_weight_dtype(const sb_model *m) { return m->weight_dtype; }
/* Computed on first use (saving or loading a state), not at load: most
 * runs never need it and hashing every weight is the slowest part of
 * loading. Threads racing here compute and store the same value. */
uint64_t sb_model_fingerprint(const sb_model *m)
{
	sb_model *mm = (sb_model *)m;
	if (!atomic_load_explicit(&mm->fingerprint_ready, memory_order_acquire)) {
		atomic_store_explicit(&mm->fingerprint, fingerprint(m), memory_order_relaxed);
		atomic_store_explicit(&mm->fingerprint_ready, true, memory_order_release);
	}
	return atomic_load_explicit(&mm->fingerprint, memory_order_relaxed);
}
