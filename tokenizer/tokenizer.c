/* tokenizer.c - the tokenizer C API (tokenizer.h): loading either kind,
 * encoding, decoding and the streaming decoder sb_detok. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define SPM_SPACE "\xE2\x96\x81"   /* U+2581, SentencePiece's space */

/* "<0xAB>" -> 0xAB, as SentencePiece spells byte pieces; -1 otherwise. */
static int spm_byte_piece(const char *p)
{
	if (strlen(p) != 6 || strncmp(p, "<0x", 3) != 0 || p[5] != '>')
		return -1;
	int v = 0;
	for (int i = 3; i < 5; i++) {
		char c = p[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* Precomputes each id's surface for sb_detok: the piece with U+2581 as a
 * space, the unknown surface, or a byte. */
static int spm_setup(sb_tokenizer *t, const char *path, sb_error *err)
{
	sb_spm_decode_opts o;
	sb_spm_decode_options(t->spm, &o);
	t->spm_strip_lead = o.add_dummy_prefix || o.remove_extra_whitespaces;
	t->spm_remove_extra = o.remove_extra_whitespaces;
	size_t n = (size_t)t->n_vocab, total = 0;
	t->info = calloc(n, sizeof *t->info);
	if (!t->info)
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory for %zu pieces", path, n);
	/* Surfaces are never longer than their pieces, except the unknown one. */
	for (int id = 0; id < t->n_vocab; id++) {
		size_t len = strlen(sb_spm_piece(t->spm, id)) + 1;
		if (!sb_size_add(total, len, &total))
			return sb_error_set(err, SB_ERR_NOMEM, "%s: pieces too long", path);
	}
	if (!sb_size_add(total, strlen(o.unk_surface) + 1, &total) ||
	    !(t->surfaces = malloc(total)))
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory for the pieces", path);
	char *w = t->surfaces;
	char *unk = w;
	strcpy(unk, o.unk_surface);
	w += strlen(unk) + 1;
	for (int id = 0; id < t->n_vocab; id++) {
		sb_piece_info *pi = &t->info[id];
		const char *p = sb_spm_piece(t->spm, id);
		int b;
		switch (sb_spm_type_of(t->spm, id)) {
		case SB_SPM_CONTROL:
			pi->kind = SB_PIECE_SKIP;
			continue;
		case SB_SPM_UNKNOWN:
			pi->kind = SB_PIECE_TEXT;
			pi->text = unk;
			continue;
		case SB_SPM_BYTE:
			b = spm_byte_piece(p);
			if (b < 0)
				return sb_error_set(err, SB_ERR_FORMAT,
				                    "%s: byte piece %d is '%.40s', expected '<0xAB>'",
				                    path, id, p);
			pi->kind = SB_PIECE_BYTE;
			pi->byte = (uint8_t)b;
			continue;
		case SB_SPM_NORMAL:
			break;
		}
		size_t bad = sb_utf8_valid(p, strlen(p));
		if (p[bad] != 0)
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: piece %d is not valid UTF-8 (byte %zu)", path, id, bad);
		pi->kind = SB_PIECE_TEXT;
		pi->text = w;
		pi->lead_space = strncmp(p, SPM_SPACE, 3) == 0;
		while (*p) {
			if (strncmp(p, SPM_SPACE, 3) == 0) {
				*w++ = ' ';
				p += 3;
			} else {
				*w++ = *p++;
			}
		}
		*w++ = 0;
	}
	return 0;
}

sb_tokenizer *sb_tokenizer_load(sb_tok_kind kind, const char *path,
                                sb_bytes_mode bytes, sb_error *err)
{
	if (!path)
		return sb_error_set(err, SB_ERR_ARG, "tokenizer: no file given"), NULL;
	if (bytes != SB_BYTES_AUTO && bytes != SB_BYTES_ON && bytes != SB_BYTES_OFF)
		return sb_error_set(err, SB_ERR_ARG, "%s: invalid byte-symbol mode %d", path, (int)bytes), NULL;
	sb_tokenizer *t = calloc(1, sizeof *t);
	if (!t)
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path), NULL;
	int rc;
	if (kind == SB_TOK_FAIRSEQ) {
		rc = sb_fairseq_load(t, path, bytes, err);
	} else if (kind == SB_TOK_SENTENCEPIECE) {
		t->kind = SB_TOK_SENTENCEPIECE;
		t->spm = sb_spm_load(path, err);
		rc = t->spm ? 0 : (err ? err->code : SB_ERR_FORMAT);
		if (!rc) {
			t->n_vocab = sb_spm_size(t->spm);
			t->bos = sb_spm_bos(t->spm);
			t->eos = sb_spm_eos(t->spm);
			t->pad = sb_spm_pad(t->spm);
			t->unk = sb_spm_unk(t->spm);
			rc = spm_setup(t, path, err);
		}
	} else {
		rc = sb_error_set(err, SB_ERR_ARG, "%s: unknown tokenizer kind %d", path, (int)kind);
	}
	if (rc) {
		sb_tokenizer_free(t);
		return NULL;
	}
	return t;
}

sb_tokenizer *sb_tokenizer_load_for_model(const sb_model *m,
                                          sb_bytes_mode bytes_override,
                                          sb_error *err)
{
	const sb_config *cfg = sb_model_config(m);
	const char *dir = sb_model_dir(m);
	size_t n;
	if (!sb_size_add(strlen(dir), strlen(cfg->tokenizer_file), &n) ||
	    !sb_size_add(n, 2, &n))
		return sb_error_set(err, SB_ERR_NOMEM, "tokenizer path too long"), NULL;
	char *path = malloc(n);
	if (!path)
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory"), NULL;
	snprintf(path, n, "%s/%s", dir, cfg->tokenizer_file);
	sb_bytes_mode bytes = bytes_override != SB_BYTES_AUTO ? bytes_override : cfg->byte_symbols;
	sb_tokenizer *t = sb_tokenizer_load(cfg->tokenizer, path, bytes, err);
	if (t && t->n_vocab > cfg->vocab_size) {
		/* More ids than embedding rows would let encode produce ids the
		 * model cannot read; fewer is the usual padding to a multiple of 8. */
		sb_error_set(err, SB_ERR_FORMAT,
		             "%s: the tokenizer has %d ids, more than the model's vocab_size %d in config.yaml",
		             path, t->n_vocab, cfg->vocab_size);
		sb_tokenizer_free(t);
		t = NULL;
	}
	free(path);
	return t;
}

void sb_tokenizer_free(sb_tokenizer *t)
{
	if (!t)
		return;
	sb_fairseq_free(t);
	sb_spm_free(t->spm);
	free(t->surfaces);
	free(t->info);
	free(t);
}

int sb_tokenizer_vocab_size(const sb_tokenizer *t) { return t->n_vocab; }
int sb_tokenizer_bos(const sb_tokenizer *t) { return t->bos; }
int sb_tokenizer_eos(const sb_tokenizer *t) { return t->eos; }
int sb_tokenizer_pad(const sb_tokenizer *t) { return t->pad; }
int sb_tokenizer_unk(const sb_tokenizer *t) { return t->unk; }
bool sb_tokenizer_is_bytes(const sb_tokenizer *t) { return t->bytes; }
sb_tok_kind sb_tokenizer_kind(const sb_tokenizer *t) { return t->kind; }

const char *sb_tokenizer_piece(const sb_tokenizer *t, int32_t id)
{
	if (id < 0 || id >= t->n_vocab)
		return NULL;
	return t->kind == SB_TOK_FAIRSEQ ? t->sym[id] : sb_spm_piece(t->spm, id);
}

int sb_tokenizer_encode(const sb_tokenizer *t, const char *text, size_t len,
                        bool add_bos, int32_t **ids, size_t *n_ids,
                        sb_error *err)
{
	size_t bad = sb_utf8_valid(text, len);
	if (bad != len)
		return sb_error_set(err, SB_ERR_FORMAT,
		                    "text is not valid UTF-8 at byte offset %zu (0x%02x)",
		                    bad, (unsigned)(uint8_t)text[bad]);
	if (t->kind == SB_TOK_FAIRSEQ)
		return sb_fairseq_encode(t, text, len, add_bos, ids, n_ids, err);
	bool bos = add_bos && t->bos >= 0;
	int rc = sb_spm_encode(t->spm, text, len, bos ? 1 : 0, ids, n_ids, err);
	if (rc)
		return rc;
	if (bos) {
		(*ids)[0] = t->bos;
		(*n_ids)++;
	}
	return 0;
}

static int check_ids(const sb_tokenizer *t, const int32_t *ids, size_t n, sb_error *err)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= t->n_vocab)
			return sb_error_set(err, SB_ERR_ARG,
			                    "token id %ld at position %zu is out of range (the tokenizer has %d ids)",
			                    (long)ids[i], i, t->n_vocab);
	return 0;
}

/* ------------------------------------------------------------- streaming */

struct sb_detok {
	const sb_tokenizer *t;
	sb_utf8_asm utf8;
	sb_tbuf out;
	bool at_start;      /* fairseq: a leading </s> is the bos marker */
	bool need_space;    /* fairseq words: a word was the last thing out */
	bool text_empty;    /* SentencePiece: nothing decoded yet */
	bool bos_ws;        /* SentencePiece: still expecting the leading space */
	bool bos_ws_seen;   /* SentencePiece: the leading space was consumed */
};

sb_detok *sb_detok_new(const sb_tokenizer *t, sb_error *err)
{
	sb_detok *d = calloc(1, sizeof *d);
	if (!d)
		return sb_error_set(err, SB_ERR_NOMEM, "out of memory for the streaming decoder"), NULL;
	d->t = t;
	sb_detok_reset(d, true);
	return d;
}

void sb_detok_free(sb_detok *d)
{
	if (!d)
		return;
	sb_tbuf_free(&d->out);
	free(d);
}

void sb_detok_reset(sb_detok *d, bool at_start)
{
	d->utf8.n = 0;
	d->out.n = 0;
	d->at_start = at_start;
	d->need_space = !at_start;
	d->text_empty = at_start;
	d->bos_ws = at_start;
	d->bos_ws_seen = false;
}

/* SentencePiece's Decode, one piece at a time: byte pieces form runs that
 * end at the next other piece; the leading U+2581 is dropped while no
 * text came out yet (all leading ones when remove_extra_whitespaces). */
static int detok_spm(sb_detok *d, const sb_piece_info *pi)
{
	if (pi->kind == SB_PIECE_BYTE) {
		d->text_empty = false;
		return sb_utf8_asm_push(&d->utf8, pi->byte, &d->out);
	}
	int rc = sb_utf8_asm_finish(&d->utf8, &d->out);
	if (rc)
		return rc;
	if (d->bos_ws_seen || !d->text_empty)
		d->bos_ws = false;
	d->bos_ws_seen = false;
	if (pi->kind == SB_PIECE_SKIP)
		return 0;
	const char *s = pi->text;
	if (pi->lead_space && d->bos_ws && d->t->spm_strip_lead) {
		s++;
		d->bos_ws_seen = !d->t->spm_remove_extra;
	}
	size_t n = strlen(s);
	if (n)
		d->text_empty = false;
	return sb_tbuf_put(&d->out, s, n);
}

static int detok_fairseq(sb_detok *d, const sb_piece_info *pi)
{
	if (pi->kind == SB_PIECE_SKIP)
		return 0;
	bool first = d->at_start;
	d->at_start = false;
	if (pi->kind == SB_PIECE_NEWLINE) {
		d->need_space = false;
		/* fairseq starts sequences with </s>: not a line of the text */
		if (first)
			return 0;
		if (d->t->bytes)
			return sb_utf8_asm_push(&d->utf8, '\n', &d->out);
		return sb_tbuf_put(&d->out, "\n", 1);
	}
	if (pi->kind == SB_PIECE_BYTE)
		return sb_utf8_asm_push(&d->utf8, pi->byte, &d->out);
	int rc = sb_utf8_asm_finish(&d->utf8, &d->out);
	if (!rc && !d->t->bytes && d->need_space)
		rc = sb_tbuf_put(&d->out, " ", 1);
	if (!rc)
		rc = sb_tbuf_put(&d->out, pi->text, strlen(pi->text));
	d->need_space = !d->t->bytes;
	return rc;
}

static int detok_one(sb_detok *d, int32_t id, sb_error *err)
{
	int rc = check_ids(d->t, &id, 1, err);
	if (rc)
		return rc;
	const sb_piece_info *pi = &d->t->info[id];
	rc = d->t->kind == SB_TOK_FAIRSEQ ? detok_fairseq(d, pi) : detok_spm(d, pi);
	if (rc)
		return sb_error_set(err, rc, "out of memory decoding token %ld", (long)id);
	return 0;
}

int sb_detok_push(sb_detok *d, int32_t id, const char **out, size_t *out_len,
                  sb_error *err)
{
	d->out.n = 0;
	int rc = detok_one(d, id, err);
	*out = d->out.p ? d->out.p : "";
	*out_len = rc ? 0 : d->out.n;
	return rc;
}

void sb_detok_flush(sb_detok *d, const char **out, size_t *out_len)
{
	d->out.n = 0;
	/* On allocation failure the pending bytes are dropped: flush cannot
	 * report an error and they would only be replacement characters. */
	if (sb_utf8_asm_finish(&d->utf8, &d->out))
		d->out.n = 0;
	d->utf8.n = 0;
	*out = d->out.p ? d->out.p : "";
	*out_len = d->out.n;
}

int sb_tokenizer_decode(const sb_tokenizer *t, const int32_t *ids, size_t n,
                        char **text, size_t *len, sb_error *err)
{
	int rc = check_ids(t, ids, n, err);
	if (rc)
		return rc;
	if (t->kind == SB_TOK_SENTENCEPIECE)
		return sb_spm_decode(t->spm, ids, n, text, len, err);
	/* The fairseq forms have no decoder of their own to follow: the
	 * streaming decoder defines them, so the two always agree. */
	sb_detok *d = sb_detok_new(t, err);
	if (!d)
		return err ? err->code : SB_ERR_NOMEM;
	sb_tbuf all = {0};
	const char *s;
	size_t sn;
	for (size_t i = 0; i < n && !rc; i++) {
		rc = sb_detok_push(d, ids[i], &s, &sn, err);
		if (!rc && sb_tbuf_put(&all, s, sn))
			rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory decoding %zu ids", n);
	}
	if (!rc) {
		sb_detok_flush(d, &s, &sn);
		if (sb_tbuf_put(&all, s, sn) || sb_tbuf_put(&all, "", 0))
			rc = sb_error_set(err, SB_ERR_NOMEM, "out of memory decoding %zu ids", n);
	}
	sb_detok_free(d);
	if (rc) {
		sb_tbuf_free(&all);
		return rc;
	}
	*text = all.p;
	*len = all.n;
	return 0;
}

static void *text_open(void *user, sb_error *err)
{
	return sb_detok_new(user, err);
}

static void text_reset(void *dec, bool at_start)
{
	sb_detok_reset(dec, at_start);
}

static int text_push(void *dec, int32_t id, const char **out, size_t *out_len, sb_error *err)
{
	return sb_detok_push(dec, id, out, out_len, err);
}

static void text_flush(void *dec, const char **out, size_t *out_len)
{
	sb_detok_flush(dec, out, out_len);
}

static void text_close(void *dec)
{
	sb_detok_free(dec);
}

sb_sched_text sb_tokenizer_sched_text(const sb_tokenizer *t)
{
	sb_sched_text x = {
		.open = text_open,
		.reset = text_reset,
		.push = text_push,
		.flush = text_flush,
		.close = text_close,
		.user = (void *)t,
	};
	return x;
}
