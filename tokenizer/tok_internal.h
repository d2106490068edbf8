/*
 * tok_internal.h - what the tokenizer's files share and nothing outside
 * tokenizer/ sees: the tokenizer struct, a growable byte buffer, the
 * incremental UTF-8 assembler and the fairseq dictionary reader.
 */
#ifndef SB_TOK_INTERNAL_H
#define SB_TOK_INTERNAL_H

#include <stdint.h>

#include "spm_shim.h"
#include "tokenizer.h"

/* How one id reads back, for streaming decoding (sb_detok). */
typedef enum sb_piece_kind {
	SB_PIECE_SKIP,     /* control ids: no text */
	SB_PIECE_TEXT,     /* a valid UTF-8 surface string */
	SB_PIECE_BYTE,     /* one raw byte (SentencePiece <0xAB>, fairseq bytes) */
	SB_PIECE_NEWLINE,  /* fairseq </s> */
} sb_piece_kind;

typedef struct sb_piece_info {
	uint8_t kind;      /* sb_piece_kind */
	uint8_t byte;      /* SB_PIECE_BYTE: the byte */
	/* SentencePiece: the piece starts with U+2581, the space that decoding
	 * drops at the beginning of a text. */
	uint8_t lead_space;
	const char *text;  /* SB_PIECE_TEXT: surface, NUL-terminated */
} sb_piece_info;

struct sb_tokenizer {
	sb_tok_kind kind;
	bool bytes;              /* fairseq byte-symbol form */
	int n_vocab;
	int bos, eos, pad, unk;
	sb_piece_info *info;     /* (n_vocab) */
	/* fairseq: */
	char **sym;              /* (n_vocab) symbols, pointing into pool */
	char *pool;              /* the symbols' bytes, NUL-separated */
	int32_t *table;          /* (table_cap) open-addressing symbol -> id, -1 empty */
	size_t table_cap;        /* a power of two, at least 2 x n_vocab */
	int32_t byte_id[256];    /* byte form: the id of each byte, -1 if none */
	/* SentencePiece: */
	sb_spm *spm;
	char *surfaces;          /* the SB_PIECE_TEXT strings info[] points into */
	bool spm_strip_lead;     /* add_dummy_prefix or remove_extra_whitespaces */
	bool spm_remove_extra;   /* remove_extra_whitespaces */
};

/* A growable byte buffer, always NUL-terminated once anything was put. */
typedef struct sb_tbuf {
	char *p;
	size_t n, cap;
} sb_tbuf;

int sb_tbuf_put(sb_tbuf *b, const void *s, size_t len);
void sb_tbuf_free(sb_tbuf *b);

/* Incremental UTF-8 assembly, with SentencePiece's rules: a byte that
 * cannot start or continue a well-formed character (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF) becomes U+FFFD and the
 * bytes after it are read again. */
typedef struct sb_utf8_asm {
	uint8_t pend[4];
	size_t n;
} sb_utf8_asm;

#define SB_UTF8_REPLACEMENT "\xEF\xBF\xBD"

/* Appends byte b; puts every character now decided into out. */
int sb_utf8_asm_push(sb_utf8_asm *a, uint8_t b, sb_tbuf *out);
/* Ends the byte run: the pending bytes become U+FFFD (re-reading after each
 * replaced byte, as SentencePiece does). */
int sb_utf8_asm_finish(sb_utf8_asm *a, sb_tbuf *out);

/* fairseq.c: reads dict.txt into t (kind, symbols, table, ids, info). */
int sb_fairseq_load(sb_tokenizer *t, const char *path, sb_bytes_mode bytes,
                    sb_error *err);
int sb_fairseq_encode(const sb_tokenizer *t, const char *text, size_t len,
                      bool add_bos, int32_t **ids, size_t *n_ids,
                      sb_error *err);
void sb_fairseq_free(sb_tokenizer *t);

#endif
