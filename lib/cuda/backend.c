/*
 * backend.c - the CUDA backend's table (backend.h): the model described to
 * the engine (lib/cuda/engine.cu) in plain C, states as blocks of device
 * memory in the one layout of sb_state_layout_of(), and the block ops
 * passed through. Built only with -Dcuda=enabled (or auto where nvcc is).
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda.h"

/* At least this many rows per block: prefill pieces of 512, as on the CPU. */
#define CUDA_MIN_ROWS 512
#define CUDA_MAX_ROWS 65536

struct sb_bctx {
	sb_cuda_ctx *c;
	void **blocks;           // (R) the current block's state blocks
	int R;
};

static void mat_of(const sb_mat *a, sb_cuda_mat *b)
{
	b->dtype = a->dtype;
	b->data = a->data;
	b->scales = a->scales;
	b->rows = a->rows;
	b->cols = a->cols;
}

static void norm_of(const sb_norm *a, sb_cuda_norm *b)
{
	b->kind = a->kind;
	b->weight = a->weight;
	b->bias = a->bias;
	b->scalar = a->scalar;
}

static void cuda_ctx_free(sb_bctx *b)
{
	if (!b)
		return;
	sb_cuda_ctx_free(b->c);
	free(b->blocks);
	free(b);
}

static int cuda_ctx_new(const sb_model *m, const sb_ctx_params *p, int device, sb_bctx **out,
                        sb_backend_info *info, sb_error *err)
{
	const sb_config *c = &m->cfg;
	*out = NULL;
	if (p->max_batch > CUDA_MAX_ROWS)
		return sb_error_set(err, SB_ERR_ARG, "max_batch %zu is too large for cuda (at most %d)",
		                    p->max_batch, CUDA_MAX_ROWS);
	const int R = p->max_batch > CUDA_MIN_ROWS ? (int)p->max_batch : CUDA_MIN_ROWS;
	sb_bctx *b = calloc(1, sizeof *b);
	sb_cuda_layer_desc *ls = calloc((size_t)c->layers, sizeof *ls);
	if (b)
		b->blocks = calloc((size_t)R, sizeof *b->blocks);
	if (!b || !ls || !b->blocks) {
		free(ls);
		cuda_ctx_free(b);
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory creating a context");
	}
	b->R = R;
	for (int l = 0; l < c->layers; l++) {
		const sb_layer *a = &m->layers[l];
		sb_cuda_layer_desc *d = &ls[l];
		norm_of(&a->norm, &d->norm);
		d->ema_q = a->ema_q;
		d->ema_pb = a->ema_pb;
		d->ema_g = a->ema_g;
		d->omega = a->omega;
		d->inv_tau = a->inv_tau;
		mat_of(&a->hx, &d->hx);
		d->hx_b = a->hx_b;
		mat_of(&a->mx, &d->mx);
		d->mx_b = a->mx_b;
		mat_of(&a->ho, &d->ho);
		d->ho_b = a->ho_b;
		d->gq = a->gq;
		d->gk = a->gk;
		d->bq = a->bq;
		d->bk = a->bk;
		d->rel_bias = a->rel_bias;
		if (c->ffn_dim > 0) {
			norm_of(&a->ffn_norm, &d->ffn_norm);
			mat_of(&a->fc1, &d->fc1);
			d->fc1_b = a->fc1_b;
			mat_of(&a->fc2, &d->fc2);
			d->fc2_b = a->fc2_b;
		}
	}
	sb_state_layout lay;
	sb_state_layout_of(m, &lay);
	sb_cuda_model d = {
		.cfg = c,
		.embed_scale = m->embed_scale,
		.tied = c->tied_embeddings,
		.layers = ls,
		.off_n_act = lay.n_act,
		.off_ring_len = lay.ring_len,
		.off_ring_head = lay.ring_head,
		.off_ring_pos = lay.ring_pos,
		.off_h = lay.h,
		.off_ring_k = lay.ring_k,
		.off_ring_v = lay.ring_v,
		.state_bytes = lay.bytes,
	};
	mat_of(&m->embed, &d.embed);
	mat_of(&m->out, &d.out);
	norm_of(&m->final_norm, &d.final_norm);
	int rc = sb_cuda_ctx_new(&d, device, R, &b->c, err);
	free(ls);
	if (rc < 0) {
		cuda_ctx_free(b);
		return rc;
	}
	info->max_rows = R;
	info->n_threads = 1;
	if (sb_cuda_device_name(device, info->device_name, sizeof info->device_name, err) < 0) {
		cuda_ctx_free(b);
		return err ? err->code : SB_ERR_DEVICE;
	}
	*out = b;
	return 0;
}

static int cuda_state_alloc(sb_state *s, sb_error *err)
{
	void *p;
	int rc = sb_cuda_state_alloc(s->device, s->lay.bytes, &p, err);
	s->block = p;
	return rc;
}

static void cuda_state_free(sb_state *s)
{
	sb_cuda_state_free(s->device, s->block);
	s->block = NULL;
}

static int cuda_state_zero(sb_state *s)
{
	return sb_cuda_state_zero(s->device, s->block, s->lay.bytes);
}

static int cuda_state_copy(sb_state *dst, const sb_state *src)
{
	return sb_cuda_state_copy(dst->device, dst->block, src->block, src->lay.bytes);
}

static int cuda_state_download(const sb_state *s, size_t off, size_t len, void *host)
{
	return sb_cuda_state_download(s->device, s->block, off, len, host);
}

static int cuda_state_upload(sb_state *s, size_t off, size_t len, const void *host)
{
	return sb_cuda_state_upload(s->device, s->block, off, len, host);
}

static sb_cuda_rows rows_of(const sb_bctx *b, const sb_rows *r)
{
	sb_cuda_rows cr = {
		.T = r->T,
		.blocks = b->blocks,
		.tokens = r->tokens,
		.pos = r->pos,
		.one_state = r->one_state,
		.distinct = r->distinct,
		.act_bias = r->act_bias,
	};
	return cr;
}

static int cuda_embed(sb_bctx *b, const sb_rows *r, sb_error *err)
{
	if (r->T > b->R)
		return sb_error_set(err, SB_ERR_ARG, "cuda: block of %d rows, at most %d", r->T, b->R);
	for (int t = 0; t < r->T; t++)
		b->blocks[t] = r->states[t]->block;
	sb_cuda_rows cr = rows_of(b, r);
	return sb_cuda_embed(b->c, &cr, err);
}

static int cuda_layer(sb_bctx *b, const sb_rows *r, int l, uint8_t *act, float *hidden,
                      sb_error *err)
{
	sb_cuda_rows cr = rows_of(b, r);
	return sb_cuda_layer(b->c, &cr, l, act, hidden, err);
}

/* The orchestration asks this backend (info.runs false) only for rows
 * t0..T-1: all of a block's, or its last. */
static int cuda_logits(sb_bctx *b, const sb_rows *r, const int *sel, int n, float *dst,
                       sb_error *err)
{
	const int t0 = r->T - n;
	for (int i = 0; i < n; i++)
		if (sel[i] != t0 + i)
			return sb_error_set(err, SB_ERR_UNSUPPORTED,
			                    "cuda: logits of a selection of rows (RUNS blocks) are not supported");
	sb_cuda_rows cr = rows_of(b, r);
	return sb_cuda_logits(b->c, &cr, t0, dst, err);
}

static int cuda_sync(sb_bctx *b, sb_error *err)
{
	return sb_cuda_sync(b->c, err);
}

const sb_backend sb_backend_cuda = {
	.name = "cuda",
	.ctx_new = cuda_ctx_new,
	.ctx_free = cuda_ctx_free,
	.state_alloc = cuda_state_alloc,
	.state_free = cuda_state_free,
	.state_zero = cuda_state_zero,
	.state_copy = cuda_state_copy,
	.state_download = cuda_state_download,
	.state_upload = cuda_state_upload,
	.embed = cuda_embed,
	.layer = cuda_layer,
	.logits = cuda_logits,
	.sync = cuda_sync,
};
