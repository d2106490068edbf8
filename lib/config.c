/* config.c - config.yaml: a strict reader over libyaml's events, and the
 * writer that produces what the reader accepts.
 *
 * The schema (docs/model-format.md) is a table below: a top-level mapping
 * of scalars and sections, each section a mapping of scalars. The reader
 * walks the event stream against that table, so anything the table does not
 * describe (an unknown key, a nested value, a second document) is refused
 * at the event where it appears, with the key path in the message. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "seqboat.h"

/* A config is a few hundred bytes; anything far larger is not one. */
#define CONFIG_FILE_MAX (1u << 20)
#define DIM_MAX 1048576

typedef enum kind {
	K_INT, K_BOOL, K_STR, K_FILE, K_POS, K_ATTN, K_NORM, K_ACT, K_TOK,
	K_BYTES, K_MAP, K_UNSUPPORTED,
} kind;

typedef struct field {
	const char *key;
	kind kind;
	bool required;
	size_t off;              /* offsetof(sb_config, ...) */
	long long min, max;      /* K_INT */
	bool even;               /* K_INT: must be even */
	const struct field *sub; /* K_MAP: its fields, ended by a NULL key */
} field;

#define INT(k, m, lo, hi) {k, K_INT, true, offsetof(sb_config, m), lo, hi, false, NULL}
#define BOOL(k, m) {k, K_BOOL, true, offsetof(sb_config, m), 0, 0, false, NULL}
#define ENUM(k, t, m) {k, t, true, offsetof(sb_config, m), 0, 0, false, NULL}
#define OPTSTR(k, m) {k, K_STR, false, offsetof(sb_config, m), 0, 0, false, NULL}
#define REFUSED(k) {k, K_UNSUPPORTED, false, 0, 0, 0, false, NULL}

static const field architecture[] = {
	INT("vocab_size", vocab_size, 1, INT_MAX),
	INT("embed_dim", embed_dim, 1, DIM_MAX),
	{"z_dim", K_INT, true, offsetof(sb_config, z_dim), 1, DIM_MAX, true, NULL},
	INT("hidden_dim", hidden_dim, 1, DIM_MAX),
	INT("n_dim", n_dim, 1, DIM_MAX),
	INT("layers", layers, 1, DIM_MAX),
	INT("window", window, 1, DIM_MAX),
	INT("ffn_dim", ffn_dim, 0, DIM_MAX),
	INT("max_positions", max_positions, 1, DIM_MAX),
	INT("truncation_length", truncation_length, 0, INT_MAX),
	ENUM("rel_pos_bias", K_POS, rel_pos),
	ENUM("attention", K_ATTN, attention),
	ENUM("norm", K_NORM, norm),
	ENUM("activation", K_ACT, activation),
	BOOL("normalize_before", normalize_before),
	BOOL("affine_final_norm", affine_final_norm),
	BOOL("scale_embedding", scale_embedding),
	BOOL("tied_embeddings", tied_embeddings),
	REFUSED("local_pos"),
	REFUSED("adaptive_input"),
	REFUSED("adaptive_softmax_cutoff"),
	REFUSED("normalize_embedding"),
	{NULL, K_INT, false, 0, 0, 0, false, NULL},
};

static const field tokenizer[] = {
	ENUM("type", K_TOK, tokenizer),
	{"file", K_FILE, true, offsetof(sb_config, tokenizer_file), 0, 0, false, NULL},
	{"byte_symbols", K_BYTES, false, offsetof(sb_config, byte_symbols), 0, 0, false, NULL},
	INT("bos_id", bos_id, -1, INT_MAX),
	INT("eos_id", eos_id, -1, INT_MAX),
	INT("pad_id", pad_id, -1, INT_MAX),
	INT("unk_id", unk_id, -1, INT_MAX),
	{NULL, K_INT, false, 0, 0, 0, false, NULL},
};

static const field chat[] = {
	OPTSTR("system_prefix", chat_system_prefix),
	OPTSTR("system_suffix", chat_system_suffix),
	OPTSTR("user_prefix", chat_user_prefix),
	OPTSTR("user_suffix", chat_user_suffix),
	OPTSTR("assistant_prefix", chat_assistant_prefix),
	OPTSTR("assistant_suffix", chat_assistant_suffix),
	{NULL, K_INT, false, 0, 0, 0, false, NULL},
};

static const field provenance[] = {
	OPTSTR("name", name),
	OPTSTR("source", source),
	OPTSTR("license", license),
	{NULL, K_INT, false, 0, 0, 0, false, NULL},
};

/* format is checked against 1 here; the struct has no field for it. */
static const field top[] = {
	{"format", K_INT, true, SIZE_MAX, 1, 1, false, NULL},
	{"provenance", K_MAP, false, 0, 0, 0, false, provenance},
	{"architecture", K_MAP, true, 0, 0, 0, false, architecture},
	{"tokenizer", K_MAP, true, 0, 0, 0, false, tokenizer},
	{"chat", K_MAP, false, 0, 0, 0, false, chat},
	{NULL, K_INT, false, 0, 0, 0, false, NULL},
};

typedef struct names {
	const char *name;
	int value;
} names;

static const names pos_names[] = {{"rotary", SB_POS_ROTARY}, {"simple", SB_POS_SIMPLE}, {NULL, 0}};
static const names attn_names[] = {{"softmax", SB_ATTN_SOFTMAX}, {"relu2", SB_ATTN_RELU2},
                                   {"laplace", SB_ATTN_LAPLACE}, {NULL, 0}};
static const names norm_names[] = {{"layernorm", SB_NORM_LAYERNORM}, {"scalenorm", SB_NORM_SCALENORM},
                                   {"rmsnorm", SB_NORM_RMSNORM}, {NULL, 0}};
static const names act_names[] = {{"silu", SB_ACT_SILU}, {"gelu", SB_ACT_GELU},
                                  {"relu", SB_ACT_RELU}, {NULL, 0}};
static const names tok_names[] = {{"sentencepiece", SB_TOK_SENTENCEPIECE},
                                  {"fairseq", SB_TOK_FAIRSEQ}, {NULL, 0}};
/* Official normalization types that seqboat refuses rather than guesses. */
static const char *const norm_refused[] = {"batchnorm", "syncbatchnorm", NULL};

static const char *name_of(const names *t, int v)
{
	for (; t->name; t++)
		if (t->value == v)
			return t->name;
	return "?";
}

const char *sb_pos_name(sb_pos_kind k) { return name_of(pos_names, (int)k); }
const char *sb_attn_name(sb_attn_kind k) { return name_of(attn_names, (int)k); }
const char *sb_norm_name(sb_norm_kind k) { return name_of(norm_names, (int)k); }
const char *sb_act_name(sb_act_kind k) { return name_of(act_names, (int)k); }

static const names *enum_table(kind k)
{
	switch (k) {
	case K_POS: return pos_names;
	case K_ATTN: return attn_names;
	case K_NORM: return norm_names;
	case K_ACT: return act_names;
	case K_TOK: return tok_names;
	default: return NULL;
	}
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. Overlong
 * forms, surrogates and code points past U+10FFFF are invalid. *cp gets
 * the code point. */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned *cp)
{
	unsigned c = s[0];
	size_t len;
	unsigned min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if (c >= 0xC2 && c <= 0xDF) {
		len = 2, min = 0x80, c &= 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3, min = 0x800, c &= 0x0F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4, min = 0x10000, c &= 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3F);
	}
	if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return len;
}

/* Offset of the first invalid UTF-8 byte in s, or n if there is none. */
static size_t utf8_invalid_at(const char *s, size_t n)
{
	size_t i = 0;
	unsigned cp;
	while (i < n) {
		size_t l = utf8_seq((const unsigned char *)s + i, n - i, &cp);
		if (!l)
			return i;
		i += l;
	}
	return n;
}

/* ------------------------------------------------------------------ read */

typedef struct reader {
	yaml_parser_t parser;
	yaml_event_t ev;
	bool have_ev;
	const char *label;
	sb_error *err;
	sb_config cfg;
	bool byte_symbols_given;
} reader;

/* A scalar as messages show it: at most 40 bytes, control bytes as '?'. */
static const char *shown(const char *s, size_t n, char buf[64])
{
	size_t k = n > 40 ? 40 : n;
	for (size_t i = 0; i < k; i++) {
		unsigned char c = (unsigned char)s[i];
		buf[i] = c < 0x20 || c == 0x7F ? '?' : (char)c;
	}
	if (n > k)
		memcpy(buf + k, "...", 4);
	else
		buf[k] = 0;
	return buf;
}

static const char *event_what(const yaml_event_t *ev)
{
	switch (ev->type) {
	case YAML_MAPPING_START_EVENT: return "a mapping";
	case YAML_SEQUENCE_START_EVENT: return "a sequence";
	case YAML_SCALAR_EVENT: return "a scalar";
	case YAML_ALIAS_EVENT: return "an alias";
	case YAML_DOCUMENT_START_EVENT: return "a second document";
	default: return "the end of the document";
	}
}

/* Advances to the next event; refuses anchors, aliases and tags wherever
 * they appear. `path` locates the event for messages. */
static int next_event(reader *r, const char *path)
{
	if (r->have_ev)
		yaml_event_delete(&r->ev);
	r->have_ev = false;
	if (!yaml_parser_parse(&r->parser, &r->ev)) {
		const yaml_parser_t *p = &r->parser;
		if (p->error == YAML_MEMORY_ERROR)
			return sb_error_set(r->err, SB_ERR_NOMEM, "%s: out of memory", r->label);
		if (p->error == YAML_READER_ERROR)
			return sb_error_set(r->err, SB_ERR_FORMAT, "%s: byte %zu: %s",
			                    r->label, p->problem_offset,
			                    p->problem ? p->problem : "unreadable input");
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: line %zu, column %zu: %s%s%s", r->label,
		                    p->problem_mark.line + 1, p->problem_mark.column + 1,
		                    p->problem ? p->problem : "invalid YAML",
		                    p->context ? " " : "", p->context ? p->context : "");
	}
	r->have_ev = true;
	const yaml_event_t *ev = &r->ev;
	const char *where = path[0] ? path : "top level";
	size_t line = ev->start_mark.line + 1;
	const yaml_char_t *anchor = NULL, *tag = NULL;
	switch (ev->type) {
	case YAML_ALIAS_EVENT:
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: %s: aliases are not allowed (*%s, line %zu)",
		                    r->label, where, ev->data.alias.anchor, line);
	case YAML_SCALAR_EVENT:
		anchor = ev->data.scalar.anchor;
		tag = ev->data.scalar.tag;
		break;
	case YAML_MAPPING_START_EVENT:
		anchor = ev->data.mapping_start.anchor;
		tag = ev->data.mapping_start.tag;
		break;
	case YAML_SEQUENCE_START_EVENT:
		anchor = ev->data.sequence_start.anchor;
		tag = ev->data.sequence_start.tag;
		break;
	default:
		break;
	}
	if (anchor)
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: %s: anchors are not allowed (&%s, line %zu)",
		                    r->label, where, anchor, line);
	if (tag)
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: %s: tags are not allowed (%s, line %zu)",
		                    r->label, where, tag, line);
	return SB_OK;
}

static bool is_plain(const yaml_event_t *ev)
{
	return ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* What YAML (1.1, as PyYAML reads it, or 1.2) would resolve a plain scalar
 * to other than a string: reading such a value as text would disagree with
 * every other YAML reader of the same file. */
static bool plain_is_not_string(const char *s, size_t n)
{
	static const char *const words[] = {
		"", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false",
		"False", "FALSE", "yes", "Yes", "YES", "no", "No", "NO", "on", "On",
		"ON", "off", "Off", "OFF", "y", "Y", "n", "N", ".inf", ".Inf",
		".INF", "-.inf", "-.Inf", "-.INF", "+.inf", "+.Inf", "+.INF", ".nan",
		".NaN", ".NAN", NULL,
	};
	for (size_t i = 0; words[i]; i++)
		if (strlen(words[i]) == n && memcmp(words[i], s, n) == 0)
			return true;
	size_t i = 0, digits = 0;
	if (i < n && (s[i] == '+' || s[i] == '-'))
		i++;
	while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
		i++, digits++;
	if (i < n && s[i] == '.')
		for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
			digits++;
	if (digits && i < n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < n && (s[i] == '+' || s[i] == '-'))
			i++;
		size_t e = i;
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
		if (i == e)
			return false;
	}
	if (digits && i == n)
		return true;
	return n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o');
}

/* Parses a plain decimal integer: no sign other than '-', no leading
 * zeros (YAML 1.1 reads 010 as octal), no separators. */
static bool parse_int(const char *s, size_t n, long long *out)
{
	size_t i = 0;
	bool neg = false;
	if (i < n && s[i] == '-')
		neg = true, i++;
	if (i == n || (s[i] == '0' && n - i > 1))
		return false;
	long long v = 0;
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		if (__builtin_mul_overflow(v, 10, &v) ||
		    __builtin_add_overflow(v, s[i] - '0', &v))
			return false;
	}
	*out = neg ? -v : v;
	return true;
}

static void set_enum(sb_config *cfg, kind k, size_t off, int v)
{
	char *p = (char *)cfg + off;
	switch (k) {
	case K_POS: *(sb_pos_kind *)(void *)p = (sb_pos_kind)v; break;
	case K_ATTN: *(sb_attn_kind *)(void *)p = (sb_attn_kind)v; break;
	case K_NORM: *(sb_norm_kind *)(void *)p = (sb_norm_kind)v; break;
	case K_ACT: *(sb_act_kind *)(void *)p = (sb_act_kind)v; break;
	case K_TOK: *(sb_tok_kind *)(void *)p = (sb_tok_kind)v; break;
	case K_BYTES: *(sb_bytes_mode *)(void *)p = (sb_bytes_mode)v; break;
	default: break;
	}
}

static int expect_list(reader *r, const char *path, const names *t,
                       const char *got)
{
	char list[160] = "";
	size_t used = 0;
	for (; t->name && used < sizeof list; t++) {
		int w = snprintf(list + used, sizeof list - used, "%s%s",
		                 used ? ", " : "", t->name);
		if (w < 0)
			break;
		used += (size_t)w;
	}
	return sb_error_set(r->err, SB_ERR_FORMAT, "%s: %s: expected one of %s, got %s",
	                    r->label, path, list, got);
}

/* The current event is the value of field f at path. */
static int read_scalar(reader *r, const field *f, const char *path)
{
	const yaml_event_t *ev = &r->ev;
	char expect[96];
	switch (f->kind) {
	case K_INT:
		if (f->min == f->max)
			snprintf(expect, sizeof expect, "%lld", f->min);
		else if (f->max == INT_MAX)
			snprintf(expect, sizeof expect, "an integer >= %lld", f->min);
		else
			snprintf(expect, sizeof expect, "an integer from %lld to %lld%s",
			         f->min, f->max, f->even ? ", even" : "");
		break;
	case K_BOOL: snprintf(expect, sizeof expect, "true or false"); break;
	case K_BYTES: snprintf(expect, sizeof expect, "auto, true or false"); break;
	case K_STR: case K_FILE: snprintf(expect, sizeof expect, "a string"); break;
	default: snprintf(expect, sizeof expect, "a name"); break;
	}
	if (ev->type != YAML_SCALAR_EVENT)
		return sb_error_set(r->err, SB_ERR_FORMAT, "%s: %s: expected %s, got %s",
		                    r->label, path, expect, event_what(ev));

	const char *s = (const char *)ev->data.scalar.value;
	size_t n = ev->data.scalar.length;
	char buf[64], got[80];
	snprintf(got, sizeof got, "%s'%s'", is_plain(ev) ? "" : "quoted ",
	         shown(s, n, buf));
	if (n > SB_CONFIG_STR - 1)
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: %s: expected %s of at most %d bytes, got %zu bytes",
		                    r->label, path, expect, SB_CONFIG_STR - 1, n);
	if (memchr(s, 0, n))
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: %s: a NUL character is not allowed", r->label, path);
	if (utf8_invalid_at(s, n) != n)
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: %s: not valid UTF-8", r->label, path);
	char *dst = f->off == SIZE_MAX ? NULL : (char *)&r->cfg + f->off;

	switch (f->kind) {
	case K_INT: {
		long long v;
		if (!is_plain(ev) || !parse_int(s, n, &v) || v < f->min || v > f->max ||
		    (f->even && v % 2 != 0))
			return sb_error_set(r->err, SB_ERR_FORMAT,
			                    "%s: %s: expected %s, got %s", r->label, path,
			                    expect, got);
		if (dst)
			*(int *)(void *)dst = (int)v;
		return SB_OK;
	}
	case K_BOOL:
	case K_BYTES: {
		bool t = is_plain(ev) && n == 4 && memcmp(s, "true", 4) == 0;
		bool fa = is_plain(ev) && n == 5 && memcmp(s, "false", 5) == 0;
		bool au = f->kind == K_BYTES && n == 4 && memcmp(s, "auto", 4) == 0;
		if (!t && !fa && !au)
			return sb_error_set(r->err, SB_ERR_FORMAT,
			                    "%s: %s: expected %s, got %s", r->label, path,
			                    expect, got);
		if (f->kind == K_BOOL) {
			*(bool *)(void *)dst = t;
			return SB_OK;
		}
		r->byte_symbols_given = true;
		set_enum(&r->cfg, K_BYTES, f->off,
			         au ? SB_BYTES_AUTO : t ? SB_BYTES_ON : SB_BYTES_OFF);
		return SB_OK;
	}
	case K_STR:
	case K_FILE:
		if (is_plain(ev) && plain_is_not_string(s, n))
			return sb_error_set(r->err, SB_ERR_FORMAT,
			                    "%s: %s: expected a string, got %s (quote it to make it a string)",
			                    r->label, path, n ? got : "an empty value");
		if (f->kind == K_FILE &&
		    (n == 0 || memchr(s, '/', n) || strstr(s, "..")))
			return sb_error_set(r->err, SB_ERR_FORMAT,
			                    "%s: %s: expected a file name in the model directory (not empty, no '/' or '..'), got %s",
			                    r->label, path, got);
		memcpy(dst, s, n);
		dst[n] = 0;
		return SB_OK;
	default:
		break;
	}

	/* An enumeration: a name from the table, plain or quoted. */
	const names *t = enum_table(f->kind);
	for (; t->name; t++) {
		if (strlen(t->name) == n && memcmp(t->name, s, n) == 0) {
			set_enum(&r->cfg, f->kind, f->off, t->value);
			return SB_OK;
		}
	}
	if (f->kind == K_NORM) {
		for (size_t i = 0; norm_refused[i]; i++)
			if (strlen(norm_refused[i]) == n && memcmp(norm_refused[i], s, n) == 0)
				return sb_error_set(r->err, SB_ERR_UNSUPPORTED,
				                    "%s: %s: seqboat does not support the official option %s",
				                    r->label, path, norm_refused[i]);
	}
	return expect_list(r, path, enum_table(f->kind), got);
}

/* The current event is a MAPPING_START holding fields; reads to its end. */
static int read_mapping(reader *r, const field *fields, const char *prefix)
{
	int rc;
	uint32_t seen = 0;
	char path[200];
	for (;;) {
		rc = next_event(r, prefix);
		if (rc)
			return rc;
		const yaml_event_t *ev = &r->ev;
		if (ev->type == YAML_MAPPING_END_EVENT)
			break;
		if (ev->type != YAML_SCALAR_EVENT)
			return sb_error_set(r->err, SB_ERR_FORMAT,
			                    "%s: %s: expected a key, got %s", r->label,
			                    prefix[0] ? prefix : "top level", event_what(ev));
		const char *key = (const char *)ev->data.scalar.value;
		size_t klen = ev->data.scalar.length;
		char buf[64];
		snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "",
		         shown(key, klen, buf));
		size_t i = 0;
		for (; fields[i].key; i++)
			if (strlen(fields[i].key) == klen && memcmp(fields[i].key, key, klen) == 0)
				break;
		const field *f = &fields[i];
		if (!f->key)
			return sb_error_set(r->err, SB_ERR_FORMAT, "%s: %s: unknown key",
			                    r->label, path);
		if (f->kind == K_UNSUPPORTED)
			return sb_error_set(r->err, SB_ERR_UNSUPPORTED,
			                    "%s: %s: seqboat does not support the official option %s",
			                    r->label, path, f->key);
		if (seen & (1u << i))
			return sb_error_set(r->err, SB_ERR_FORMAT, "%s: %s: duplicate key",
			                    r->label, path);
		seen |= 1u << i;

		rc = next_event(r, path);
		if (rc)
			return rc;
		if (f->kind != K_MAP) {
			rc = read_scalar(r, f, path);
		} else if (r->ev.type != YAML_MAPPING_START_EVENT) {
			rc = sb_error_set(r->err, SB_ERR_FORMAT,
			                  "%s: %s: expected a mapping, got %s", r->label,
			                  path, event_what(&r->ev));
		} else {
			if (f->sub == chat)
				r->cfg.has_chat_template = true;
			rc = read_mapping(r, f->sub, path);
		}
		if (rc)
			return rc;
	}
	for (size_t i = 0; fields[i].key; i++) {
		if (fields[i].required && !(seen & (1u << i)))
			return sb_error_set(r->err, SB_ERR_FORMAT,
			                    "%s: %s%s%s: missing (required)", r->label,
			                    prefix, prefix[0] ? "." : "", fields[i].key);
	}
	return SB_OK;
}

/* Rules that tie fields of different sections together. */
static int cross_check(reader *r)
{
	const sb_config *c = &r->cfg;
	const struct {
		const char *key;
		int v;
	} ids[] = {
		{"bos_id", c->bos_id}, {"eos_id", c->eos_id},
		{"pad_id", c->pad_id}, {"unk_id", c->unk_id},
	};
	for (size_t i = 0; i < 4; i++)
		if (ids[i].v >= c->vocab_size)
			return sb_error_set(r->err, SB_ERR_FORMAT,
			                    "%s: tokenizer.%s: expected an integer from -1 to %d (vocab_size - 1), got '%d'",
			                    r->label, ids[i].key, c->vocab_size - 1, ids[i].v);
	if (c->tokenizer != SB_TOK_FAIRSEQ && r->byte_symbols_given)
		return sb_error_set(r->err, SB_ERR_FORMAT,
		                    "%s: tokenizer.byte_symbols: only valid with type fairseq",
		                    r->label);
	return SB_OK;
}

static void config_defaults(sb_config *c)
{
	memset(c, 0, sizeof *c);
	c->byte_symbols = SB_BYTES_AUTO;
}

int sb_config_parse(const char *buf, size_t len, const char *label,
                    sb_config *cfg, sb_error *err)
{
	if (!label)
		label = "config.yaml";
	if (!cfg || (!buf && len))
		return sb_error_set(err, SB_ERR_ARG, "%s: NULL argument", label);
	reader *r = calloc(1, sizeof *r);
	if (!r)
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", label);
	int rc = SB_OK;
	bool parser_ok = false;
	r->label = label;
	r->err = err;
	config_defaults(&r->cfg);

	/* libyaml reports bad UTF-8 by byte offset only; a line is friendlier. */
	size_t bad = utf8_invalid_at(buf, len);
	if (bad != len) {
		size_t line = 1, col = 1;
		for (size_t i = 0; i < bad; i++, col++)
			if (buf[i] == '\n')
				line++, col = 0;
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: line %zu, column %zu: not valid UTF-8", label,
		                  line, col);
		goto out;
	}
	if (!yaml_parser_initialize(&r->parser)) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", label);
		goto out;
	}
	parser_ok = true;
	yaml_parser_set_input_string(&r->parser, (const unsigned char *)buf, len);

	rc = next_event(r, "");
	if (rc)
		goto out;
	rc = next_event(r, "");
	if (rc)
		goto out;
	if (r->ev.type == YAML_STREAM_END_EVENT) {
		rc = sb_error_set(err, SB_ERR_FORMAT, "%s: the document is empty", label);
		goto out;
	}
	rc = next_event(r, "");
	if (rc)
		goto out;
	if (r->ev.type != YAML_MAPPING_START_EVENT) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: expected a mapping at the top level, got %s",
		                  label, event_what(&r->ev));
		goto out;
	}
	rc = read_mapping(r, top, "");
	if (rc)
		goto out;
	rc = next_event(r, "");   /* DOCUMENT_END */
	if (rc)
		goto out;
	rc = next_event(r, "");
	if (rc)
		goto out;
	if (r->ev.type != YAML_STREAM_END_EVENT) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: more than one document (one expected)", label);
		goto out;
	}
	rc = cross_check(r);
	if (rc)
		goto out;
	*cfg = r->cfg;
out:
	if (r->have_ev)
		yaml_event_delete(&r->ev);
	if (parser_ok)
		yaml_parser_delete(&r->parser);
	free(r);
	return rc;
}

int sb_config_load(const char *path, sb_config *cfg, sb_error *err)
{
	if (!path)
		return sb_error_set(err, SB_ERR_ARG, "sb_config_load: NULL path");
	int rc = SB_OK;
	char *buf = NULL;
	FILE *fp = fopen(path, "rb");
	if (!fp) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", path,
		                  strerror(errno));
		goto out;
	}
	buf = malloc(CONFIG_FILE_MAX + 1);
	if (!buf) {
		rc = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	size_t n = fread(buf, 1, CONFIG_FILE_MAX + 1, fp);
	if (ferror(fp)) {
		rc = sb_error_set(err, SB_ERR_IO, "%s: cannot read: %s", path,
		                  strerror(errno));
		goto out;
	}
	if (n > CONFIG_FILE_MAX) {
		rc = sb_error_set(err, SB_ERR_FORMAT,
		                  "%s: larger than %u bytes, not a config", path,
		                  CONFIG_FILE_MAX);
		goto out;
	}
	rc = sb_config_parse(buf, n, path, cfg, err);
out:
	free(buf);
	if (fp)
		fclose(fp);
	return rc;
}

/* ----------------------------------------------------------------- write */

typedef struct sbuf {
	char *p;
	size_t len, cap;
	bool failed;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	size_t need;
	if (!sb_size_add(b->len, n + 1, &need)) {
		b->failed = true;
		return;
	}
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < need)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void puts_(sbuf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void putf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void putf(sbuf *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof tmp)
		b->failed = true;
	else
		put(b, tmp, (size_t)n);
}

/* A YAML double-quoted scalar. Escaped: quote, backslash, and every code
 * point libyaml would refuse as input or fold as a line break (C0, DEL,
 * C1, U+2028/2029, BOM, U+FFFE/FFFF). */
static bool put_quoted(sbuf *b, const char *s)
{
	size_t n = strlen(s);
	put(b, "\"", 1);
	for (size_t i = 0; i < n;) {
		unsigned cp;
		size_t l = utf8_seq((const unsigned char *)s + i, n - i, &cp);
		if (!l)
			return false;
		if (cp == '"')
			puts_(b, "\\\"");
		else if (cp == '\\')
			puts_(b, "\\\\");
		else if (cp == '\n')
			puts_(b, "\\n");
		else if (cp == '\t')
			puts_(b, "\\t");
		else if (cp == '\r')
			puts_(b, "\\r");
		else if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
			putf(b, "\\x%02X", cp);
		else if (cp == 0x2028 || cp == 0x2029 || cp == 0xFEFF ||
		         cp == 0xFFFE || cp == 0xFFFF)
			putf(b, "\\u%04X", cp);
		else
			put(b, s + i, l);
		i += l;
	}
	put(b, "\"", 1);
	return true;
}

static bool field_str(const sb_config *c, const field *f)
{
	const char *s = (const char *)c + f->off;
	return memchr(s, 0, SB_CONFIG_STR) != NULL;
}

static int write_section(sbuf *b, const sb_config *c, const char *name,
                         const field *fields, sb_error *err)
{
	putf(b, "%s:\n", name);
	for (const field *f = fields; f->key; f++) {
		const char *p = (const char *)c + f->off;
		switch (f->kind) {
		case K_INT:
			putf(b, "  %s: %d\n", f->key, *(const int *)(const void *)p);
			break;
		case K_BOOL:
			putf(b, "  %s: %s\n", f->key,
			     *(const bool *)(const void *)p ? "true" : "false");
			break;
		case K_STR:
		case K_FILE:
			putf(b, "  %s: ", f->key);
			if (!field_str(c, f) || !put_quoted(b, p))
				return sb_error_set(err, SB_ERR_ARG,
				                    "config: %s.%s is not a NUL-terminated UTF-8 string",
				                    name, f->key);
			puts_(b, "\n");
			break;
		case K_POS: putf(b, "  %s: %s\n", f->key, sb_pos_name(c->rel_pos)); break;
		case K_ATTN: putf(b, "  %s: %s\n", f->key, sb_attn_name(c->attention)); break;
		case K_NORM: putf(b, "  %s: %s\n", f->key, sb_norm_name(c->norm)); break;
		case K_ACT: putf(b, "  %s: %s\n", f->key, sb_act_name(c->activation)); break;
		case K_TOK:
			putf(b, "  %s: %s\n", f->key, name_of(tok_names, (int)c->tokenizer));
			break;
		case K_BYTES:
			if (c->tokenizer == SB_TOK_FAIRSEQ)
				putf(b, "  %s: %s\n", f->key,
				     c->byte_symbols == SB_BYTES_AUTO ? "auto" :
				     c->byte_symbols == SB_BYTES_ON ? "true" : "false");
			break;
		default:
			break;
		}
	}
	return SB_OK;
}

char *sb_config_to_yaml(const sb_config *cfg, sb_error *err)
{
	sbuf b = {0};
	char *out = NULL;
	sb_config check;
	if (!cfg) {
		sb_error_set(err, SB_ERR_ARG, "sb_config_to_yaml: NULL config");
		goto out;
	}
	if (!cfg->has_chat_template) {
		for (const field *f = chat; f->key; f++) {
			if (((const char *)cfg + f->off)[0]) {
				sb_error_set(err, SB_ERR_ARG,
				             "config: chat.%s is set but has_chat_template is false",
				             f->key);
				goto out;
			}
		}
	}
	if (cfg->tokenizer != SB_TOK_FAIRSEQ && cfg->byte_symbols != SB_BYTES_AUTO) {
		sb_error_set(err, SB_ERR_ARG,
		             "config: tokenizer.byte_symbols is set but the tokenizer is not fairseq");
		goto out;
	}
	puts_(&b, "format: 1\n");
	if (write_section(&b, cfg, "provenance", provenance, err) ||
	    write_section(&b, cfg, "architecture", architecture, err) ||
	    write_section(&b, cfg, "tokenizer", tokenizer, err) ||
	    (cfg->has_chat_template && write_section(&b, cfg, "chat", chat, err)))
		goto out;
	if (b.failed) {
		sb_error_set(err, SB_ERR_NOMEM, "config: out of memory");
		goto out;
	}
	/* The reader is the definition of a valid config: a value it would
	 * refuse (an odd z_dim, an id past the vocabulary) is refused here
	 * rather than written. */
	if (sb_config_parse(b.p, b.len, "config", &check, err)) {
		if (err)
			err->code = SB_ERR_ARG;
		goto out;
	}
	out = b.p;
	b.p = NULL;
out:
	free(b.p);
	return out;
}
