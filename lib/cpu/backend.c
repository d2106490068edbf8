/*
 * backend.c - the CPU backend's table (backend.h): contexts with their
 * thread pool and scratch, and states as blocks of host memory.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu.h"
#include "pool.h"

/* Zeroed, 64-byte aligned scratch whose pages are touched now (calloc of a large block maps
 * zero pages lazily): the context's memory is all resident from the start,
 * so RSS does not creep up the first time a long ring is attended. */
static void *xcalloc(size_t n, size_t size, bool *ok)
{
	size_t bytes;
	if (!sb_size_mul(n ? n : 1, size, &bytes)) {
		*ok = false;
		return NULL;
	}
	/* 64-byte aligned: the kernels' 32-byte loads never straddle lines */
	void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!p)
		*ok = false;
	else
		memset(p, 0, bytes);
	return p;
}

static void cpu_ctx_free(sb_bctx *x)
{
	if (!x)
		return;
	free(x->inv_freq);
	free(x->aidx);
	free(x->arow);
	free(x->pr1);
	free(x->x);
	free(x->xn);
	free(x->mx);
	free(x->hxu);
	free(x->mxa);
	free(x->zgv);
	free(x->qv);
	free(x->og);
	free(x->att);
	free(x->ffn);
	free(x->scores);
	free(x->ws);
	free(x->kbuf);
	free(x->ck);
	free(x->cv);
	free(x->cpos);
	free(x->sc);
	free(x->part_og);
	sb_pool_free(x->pool);
	free(x);
}

static int cpu_ctx_new(const sb_model *m, const sb_ctx_params *p, int device, sb_bctx **out,
                       sb_backend_info *info, sb_error *err)
{
	const sb_config *c = &m->cfg;
	*out = NULL;
	if (device != 0)
		return sb_error_set(err, SB_ERR_ARG, "device cpu:%d: the CPU backend has only cpu:0",
		                    device);
	if (p->max_batch > (size_t)1 << 20)
		return sb_error_set(err, SB_ERR_ARG, "max_batch %zu is too large (at most %d)",
		                    p->max_batch, 1 << 20);
	const size_t R = p->max_batch > SB_CPU_BLOCK_ROWS ? p->max_batch : SB_CPU_BLOCK_ROWS;
	const size_t D = (size_t)c->embed_dim, Z = (size_t)c->z_dim, H = (size_t)c->hidden_dim,
	             F = (size_t)(c->ffn_dim > 0 ? c->ffn_dim : 0), W1 = (size_t)c->window + 1;
	sb_bctx *x = calloc(1, sizeof *x);
	if (!x)
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a context");
	bool ok = true;
	x->m = m;
	x->R = (int)R;
	int n_threads = p->n_threads;
	if (n_threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = n > 0 ? (int)n : 1;
	}
	if (n_threads > SB_MAX_THREADS)
		n_threads = SB_MAX_THREADS;
	x->n_threads = n_threads;
	const size_t NT = (size_t)n_threads;
	x->part_og = xcalloc(NT * H, sizeof(float), &ok);
	x->inv_freq = xcalloc(Z / 2, sizeof(double), &ok);
	x->aidx = xcalloc(R, sizeof(int), &ok);
	x->arow = xcalloc(R, sizeof(int), &ok);
	x->pr1 = xcalloc(R, sizeof(float), &ok);
	x->x = xcalloc(R * D, sizeof(float), &ok);
	x->xn = xcalloc(R * D, sizeof(float), &ok);
	x->mx = xcalloc(R * D, sizeof(float), &ok);
	x->hxu = xcalloc(R * (2 + D), sizeof(float), &ok);
	x->mxa = xcalloc(R * D, sizeof(float), &ok);
	x->zgv = xcalloc(R * (Z + 2 * H), sizeof(float), &ok);
	x->qv = xcalloc(R * Z, sizeof(float), &ok);
	x->og = xcalloc(R * H, sizeof(float), &ok);
	x->att = xcalloc(R * D, sizeof(float), &ok);
	x->ffn = xcalloc(R * F, sizeof(float), &ok);
	x->scores = xcalloc(NT * W1, sizeof(float), &ok);
	size_t maxc = D > H ? D : H;
	if (F > maxc)
		maxc = F;
	x->ws = xcalloc(sb_matmul_ws_floats((int)maxc, n_threads), sizeof(float), &ok);
	x->kbuf = xcalloc(R * Z, sizeof(float), &ok);
	if (W1 >= SB_CPU_BATCHED_ATTN_MIN_W1) {
		x->ck = xcalloc((W1 + R) * Z, sizeof(float), &ok);
		x->cv = xcalloc((W1 + R) * H, sizeof(float), &ok);
		x->cpos = xcalloc(W1 + R, sizeof(int64_t), &ok);
		x->sc = xcalloc(R * (W1 + R), sizeof(float), &ok);
	}
	if (!ok) {
		cpu_ctx_free(x);
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a context");
	}
	for (size_t i = 0; i < Z / 2; i++)
		x->inv_freq[i] = pow(10000.0, -2.0 * (double)i / (double)Z);
	/* The pool splits every product; OpenBLAS's own threads would only
	 * compete with it for the cores. */
	openblas_set_num_threads(1);
	if (!(x->pool = sb_pool_new(n_threads))) {
		cpu_ctx_free(x);
		return sb_error_set(err, SB_ERR_NOMEM, "cannot start %d threads", n_threads);
	}
	info->max_rows = (int)R;
	info->n_threads = n_threads;
	info->runs = true;
	*out = x;
	return 0;
}

/* Blocks from this size on are mapped directly: the kernel hands out
 * zero pages lazily, so a state costs resident memory only for what its
 * sequence has touched (malloc would recycle and re-zero heap memory). */
#define MAP_MIN ((size_t)1 << 20)

static int cpu_state_alloc(sb_state *s, sb_error *err)
{
	const int L = s->m->cfg.layers;
	sb_cpu_state *cs = calloc(1, sizeof *cs + (size_t)L * sizeof(int32_t));
	if (!cs)
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory allocating a state");
	size_t bytes = s->lay.bytes ? s->lay.bytes : 1;
	if (bytes >= MAP_MIN) {
		void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p != MAP_FAILED) {
			s->block = p;
			cs->mapped = true;
		}
	}
	if (!cs->mapped)
		s->block = calloc(1, bytes);
	if (!s->block) {
		free(cs);
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory allocating a state of %zu bytes",
		                    s->lay.bytes);
	}
	s->priv = cs;
	return 0;
}

static void cpu_state_free(sb_state *s)
{
	sb_cpu_state *cs = s->priv;
	if (cs && cs->mapped)
		munmap(s->block, s->lay.bytes);
	else
		free(s->block);
	free(cs);
	s->block = NULL;
	s->priv = NULL;
}

/* The ring arrays of a layer, as (offset, bytes per slot) of the block. */
static void ring_arrays(const sb_state *s, int l, size_t off[3], size_t per[3])
{
	const sb_config *c = &s->m->cfg;
	const size_t W1 = (size_t)c->window + 1;
	per[0] = sizeof(int64_t);
	per[1] = (size_t)c->z_dim * sizeof(float);
	per[2] = (size_t)c->hidden_dim * sizeof(float);
	off[0] = s->lay.ring_pos + (size_t)l * W1 * per[0];
	off[1] = s->lay.ring_k + (size_t)l * W1 * per[1];
	off[2] = s->lay.ring_v + (size_t)l * W1 * per[2];
}

/* Zeroes slots [from, to) of layer l's ring. */
static void zero_slots(sb_state *s, int l, int from, int to)
{
	size_t off[3], per[3];
	ring_arrays(s, l, off, per);
	for (int a = 0; from < to && a < 3; a++)
		memset(s->block + off[a] + (size_t)from * per[a], 0, (size_t)(to - from) * per[a]);
}

static int cpu_state_zero(sb_state *s)
{
	sb_cpu_state *cs = s->priv;
	/* counters and the EMA state, then the used part of each ring */
	memset(s->block, 0, s->lay.ring_pos);
	memset(s->block + s->lay.h, 0, s->lay.ring_k - s->lay.h);
	for (int l = 0; l < s->m->cfg.layers; l++) {
		zero_slots(s, l, 0, cs->dirty[l]);
		cs->dirty[l] = 0;
	}
	return 0;
}

static int cpu_state_copy(sb_state *dst, const sb_state *src)
{
	sb_cpu_state *cd = dst->priv;
	const sb_cpu_state *cs = src->priv;
	memcpy(dst->block, src->block, src->lay.ring_pos);
	memcpy(dst->block + src->lay.h, src->block + src->lay.h, src->lay.ring_k - src->lay.h);
	for (int l = 0; l < src->m->cfg.layers; l++) {
		size_t off[3], per[3];
		ring_arrays(src, l, off, per);
		for (int a = 0; a < 3; a++)
			memcpy(dst->block + off[a], src->block + off[a], (size_t)cs->dirty[l] * per[a]);
		if (cd->dirty[l] > cs->dirty[l])
			zero_slots(dst, l, cs->dirty[l], cd->dirty[l]);
		cd->dirty[l] = cs->dirty[l];
	}
	return 0;
}

static int cpu_state_download(const sb_state *s, size_t off, size_t len, void *host)
{
	memcpy(host, s->block + off, len);
	return 0;
}

static int cpu_state_upload(sb_state *s, size_t off, size_t len, const void *host)
{
	memcpy(s->block + off, host, len);
	/* Bytes from outside may land anywhere in the rings. */
	sb_cpu_state *cs = s->priv;
	if (off + len > s->lay.ring_pos)
		for (int l = 0; l < s->m->cfg.layers; l++)
			cs->dirty[l] = s->m->cfg.window + 1;
	return 0;
}

const sb_backend sb_backend_cpu = {
	.name = "cpu",
	.ctx_new = cpu_ctx_new,
	.ctx_free = cpu_ctx_free,
	.state_alloc = cpu_state_alloc,
	.state_free = cpu_state_free,
	.state_zero = cpu_state_zero,
	.state_copy = cpu_state_copy,
	.state_download = cpu_state_download,
	.state_upload = cpu_state_upload,
	.embed = sb_cpu_embed,
	.layer = sb_cpu_layer,
	.logits = sb_cpu_logits,
	.sync = NULL,
};
