/*
 * state.c - the per-sequence constant-size state: per layer the EMA state
 * and the window ring of the last W+1 activated tokens (keys, values,
 * positions). One block, sized by the model alone, kept by a backend in
 * its memory (backend.h); its layout, its serialized form and the checks
 * of a loaded file are here, the same for every backend.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"

#define STATE_MAGIC "SBSTATE"  /* 8 bytes with its NUL */
#define STATE_VERSION 1u
/* magic(8) version(4) reserved(4) fingerprint(8) n_tokens(8) bytes(8) */
#define STATE_HEADER 40

static size_t align8(size_t x) { return (x + 7) & ~(size_t)7; }

void sb_state_layout_of(const sb_model *m, sb_state_layout *lay)
{
	const sb_config *c = &m->cfg;
	size_t L = (size_t)c->layers, D = (size_t)c->embed_dim, N = (size_t)c->n_dim,
	       Z = (size_t)c->z_dim, H = (size_t)c->hidden_dim, W1 = (size_t)c->window + 1;
	size_t off = 0;
	lay->n_act = off;      off += align8(L * sizeof(uint64_t));
	lay->ring_len = off;   off += align8(L * sizeof(int32_t));
	lay->ring_head = off;  off += align8(L * sizeof(int32_t));
	lay->ring_pos = off;   off += align8(L * W1 * sizeof(int64_t));
	lay->h = off;          off += align8(L * D * N * sizeof(float));
	lay->ring_k = off;     off += align8(L * W1 * Z * sizeof(float));
	lay->ring_v = off;     off += align8(L * W1 * H * sizeof(float));
	lay->bytes = off;
}

size_t sb_state_bytes(const sb_model *m)
{
	sb_state_layout lay;
	sb_state_layout_of(m, &lay);
	return lay.bytes + sizeof(uint64_t); /* + the token counter */
}

sb_state_sizes sb_state_sizes_of(const sb_model *m)
{
	sb_state_layout lay;
	sb_state_layout_of(m, &lay);
	sb_state_sizes z;
	z.total = sb_state_bytes(m);
	z.ema = lay.ring_k - lay.h;
	z.ring = lay.bytes - lay.ring_k + (lay.h - lay.ring_pos);
	z.counters = z.total - z.ema - z.ring;
	return z;
}

sb_state *sb_state_new_on(const sb_model *m, const sb_backend *be, int device, sb_error *err)
{
	sb_state *s = calloc(1, sizeof *s);
	if (!s) {
		sb_error_set(err, SB_ERR_NOMEM, "out of memory allocating a state");
		return NULL;
	}
	s->m = m;
	s->be = be;
	s->device = device;
	sb_backend_device_name(be, device, s->where, sizeof s->where);
	sb_state_layout_of(m, &s->lay);
	if (be->state_alloc(s, err) < 0) {
		free(s);
		return NULL;
	}
	return s;
}

sb_state *sb_state_new(const sb_model *m, sb_error *err)
{
	return sb_state_new_on(m, &sb_backend_cpu, 0, err);
}

void sb_state_free(sb_state *s)
{
	if (!s)
		return;
	s->be->state_free(s);
	free(s);
}

void sb_state_reset(sb_state *s)
{
	s->be->state_zero(s);
	s->n_tokens = 0;
}

static bool same_place(const sb_state *a, const sb_state *b)
{
	return a->be == b->be && a->device == b->device;
}

int sb_state_copy(sb_state *dst, const sb_state *src)
{
	if (dst == src)
		return 0;
	if (dst->lay.bytes != src->lay.bytes)
		return SB_ERR_ARG;
	int rc;
	if (same_place(dst, src))
		rc = src->be->state_copy(dst, src);
	else if (dst->be == &sb_backend_cpu)
		rc = src->be->state_download(src, 0, src->lay.bytes, dst->block);
	else if (src->be == &sb_backend_cpu)
		rc = dst->be->state_upload(dst, 0, src->lay.bytes, src->block);
	else {
		/* device to another device: through the host, a piece at a time */
		unsigned char buf[1 << 14];
		rc = 0;
		for (size_t off = 0; rc == 0 && off < src->lay.bytes; off += sizeof buf) {
			size_t n = src->lay.bytes - off < sizeof buf ? src->lay.bytes - off : sizeof buf;
			rc = src->be->state_download(src, off, n, buf);
			if (rc == 0)
				rc = dst->be->state_upload(dst, off, n, buf);
		}
	}
	if (rc == 0)
		dst->n_tokens = src->n_tokens;
	return rc;
}

sb_state *sb_state_clone(const sb_state *src, sb_error *err)
{
	sb_state *s = sb_state_new_on(src->m, src->be, src->device, err);
	if (s && sb_state_copy(s, src) < 0) {
		sb_error_set(err, SB_ERR_DEVICE, "%s: cannot copy a state", src->where);
		sb_state_free(s);
		return NULL;
	}
	return s;
}

const char *sb_state_device(const sb_state *s) { return s->where; }

uint64_t sb_state_n_tokens(const sb_state *s) { return s->n_tokens; }

uint64_t sb_state_n_activated(const sb_state *s, int layer)
{
	if (layer < 0 || layer >= s->m->cfg.layers)
		return 0;
	uint64_t n = 0;
	if (s->be->state_download(s, s->lay.n_act + (size_t)layer * sizeof n, sizeof n, &n) < 0)
		return 0;
	return n;
}

size_t sb_state_serialized_size(const sb_model *m)
{
	sb_state_layout lay;
	sb_state_layout_of(m, &lay);
	return STATE_HEADER + lay.bytes;
}

static void put_u32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put_u64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint32_t get_u32(const unsigned char *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get_u64(const unsigned char *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

int sb_state_serialize(const sb_state *s, void *buf, size_t cap, sb_error *err)
{
	size_t need = STATE_HEADER + s->lay.bytes;
	if (cap < need)
		return sb_error_set(err, SB_ERR_ARG, "state buffer holds %zu bytes, needs %zu", cap, need);
	unsigned char *p = buf;
	memcpy(p, STATE_MAGIC, 8);
	put_u32(p + 8, STATE_VERSION);
	put_u32(p + 12, 0);
	put_u64(p + 16, sb_model_fingerprint(s->m));
	put_u64(p + 24, s->n_tokens);
	put_u64(p + 32, s->lay.bytes);
	if (s->be->state_download(s, 0, s->lay.bytes, p + STATE_HEADER) < 0)
		return sb_error_set(err, SB_ERR_DEVICE, "%s: cannot read the state back", s->where);
	return 0;
}

/* The most tokens a loaded state may claim: positions are int64 and the
 * forward pass adds to them and subtracts them, so a claim near 2^63
 * would overflow there (2^62 tokens take millennia to read). */
#define STATE_MAX_TOKENS (UINT64_C(1) << 62)

/* A state file is untrusted input: every counter must be one the forward
 * pass can have left, before anything indexes with it. Per layer: the
 * activations counted are at most the tokens read; the ring holds exactly
 * the last min(activations, W+1) of them, so its length is that, its head
 * stays 0 until it is full, and its positions rise strictly from oldest to
 * newest and lie below the tokens read. */
static int check_rings(const sb_state *s, const unsigned char *block, uint64_t n_tokens,
                       const char *label, sb_error *err)
{
	const int L = s->m->cfg.layers, W1 = s->m->cfg.window + 1;
	if (n_tokens > STATE_MAX_TOKENS)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: state claims %llu tokens read, more than the %llu a state can reach",
		                    label, (unsigned long long)n_tokens,
		                    (unsigned long long)STATE_MAX_TOKENS);
	const uint64_t *acts = (const uint64_t *)(block + s->lay.n_act);
	const int32_t *lens = (const int32_t *)(block + s->lay.ring_len),
	              *heads = (const int32_t *)(block + s->lay.ring_head);
	const int64_t *P = (const int64_t *)(block + s->lay.ring_pos);
	for (int l = 0; l < L; l++) {
		int32_t len = lens[l], head = heads[l];
		uint64_t act = acts[l];
		if (act > n_tokens)
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: layer %d counts %llu activated tokens of %llu read", label, l,
			                    (unsigned long long)act, (unsigned long long)n_tokens);
		uint64_t want = act < (uint64_t)W1 ? act : (uint64_t)W1;
		if (len < 0 || (uint64_t)len != want || head < 0 || head >= W1 || (len < W1 && head != 0))
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: layer %d ring counters (length %d, head %d) do not fit %llu activated tokens and window %d",
			                    label, l, len, head, (unsigned long long)act, W1 - 1);
		int64_t prev = -1;
		for (int e = 0; e < len; e++) {
			int64_t pos = P[(size_t)l * W1 + (size_t)sb_ring_slot(head, e, W1)];
			if (pos < 0 || (uint64_t)pos >= n_tokens)
				return sb_error_set(err, SB_ERR_FORMAT,
				                    "%s: layer %d ring holds position %lld, outside the %llu tokens read",
				                    label, l, (long long)pos, (unsigned long long)n_tokens);
			if (pos <= prev)
				return sb_error_set(err, SB_ERR_FORMAT,
				                    "%s: layer %d ring positions are not in reading order (%lld after %lld)",
				                    label, l, (long long)pos, (long long)prev);
			prev = pos;
		}
	}
	return 0;
}

/* The EMA state and the ring's keys and values (floats from byte `from`
 * of the block on) must be finite: a NaN or an infinity would flow into
 * every later logit. */
static int check_finite(const unsigned char *block, size_t from, size_t to, const char *label,
                        sb_error *err)
{
	for (size_t off = from; off + 4 <= to; off += 4) {
		uint32_t u;
		memcpy(&u, block + off, 4);
		if ((u & 0x7f800000u) == 0x7f800000u)
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: state holds a non-finite value (%s) at byte %zu", label,
			                    (u & 0x007fffffu) ? "NaN" : "infinity", off);
	}
	return 0;
}

int sb_state_deserialize(sb_state *s, const void *buf, size_t len, const char *label,
                         sb_error *err)
{
	const unsigned char *p = buf;
	if (len < STATE_HEADER || memcmp(p, STATE_MAGIC, 8) != 0)
		return sb_error_set(err, SB_ERR_FORMAT, "%s: not a seqboat state (bad magic)", label);
	uint32_t ver = get_u32(p + 8);
	if (ver != STATE_VERSION)
		return sb_error_set(err, SB_ERR_FORMAT, "%s: state format version %u, expected %u",
		                    label, ver, STATE_VERSION);
	if (get_u64(p + 16) != sb_model_fingerprint(s->m))
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: state was saved with a different model (fingerprint %016llx, this model %016llx)",
		                    label, (unsigned long long)get_u64(p + 16),
		                    (unsigned long long)sb_model_fingerprint(s->m));
	uint64_t bytes = get_u64(p + 32);
	if (bytes != s->lay.bytes || len != STATE_HEADER + s->lay.bytes)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "%s: state holds %llu bytes of %zu, expected %zu", label,
		                    (unsigned long long)bytes, len, STATE_HEADER + s->lay.bytes);
	/* The buffer is checked in place, so a bad file leaves s untouched;
	 * the counters are read from an aligned copy. */
	uint64_t n_tokens = get_u64(p + 24);
	size_t counters = s->lay.h; /* n_act, ring_len, ring_head, ring_pos */
	unsigned char *head = malloc(counters ? counters : 1);
	if (!head)
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", label);
	memcpy(head, p + STATE_HEADER, counters);
	int rc = check_rings(s, head, n_tokens, label, err);
	free(head);
	if (rc == 0)
		rc = check_finite(p + STATE_HEADER, s->lay.h, s->lay.bytes, label, err);
	if (rc == 0) {
		if (s->be->state_upload(s, 0, s->lay.bytes, p + STATE_HEADER) < 0)
			return sb_error_set(err, SB_ERR_DEVICE, "%s: cannot write the state to %s", label,
			                    s->where);
		s->n_tokens = n_tokens;
	}
	return rc;
}

int sb_state_save(const sb_state *s, const char *path, sb_error *err)
{
	size_t n = sb_state_serialized_size(s->m);
	unsigned char *buf = malloc(n);
	if (!buf)
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory for a state of %zu bytes",
		                    path, n);
	int rc = sb_state_serialize(s, buf, n, err);
	if (rc < 0)
		sb_error_prefix(err, path);
	else
		rc = sb_file_write(path, buf, n, err);
	free(buf);
	return rc;
}

int sb_state_load(sb_state *s, const char *path, sb_error *err)
{
	size_t n = sb_state_serialized_size(s->m);
	unsigned char *buf = malloc(n + 1);
	int rc;
	FILE *f = fopen(path, "rb");
	if (!buf || !f) {
		rc = !buf ? sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path)
		          : sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
		goto out;
	}
	/* Read one byte more than expected to notice trailing data. */
	size_t got = fread(buf, 1, n + 1, f);
	if (ferror(f)) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: read failed", path);
		goto out;
	}
	rc = sb_state_deserialize(s, buf, got, path, err);
out:
	if (f)
		fclose(f);
	free(buf);
	return rc;
}
