/*
 * tokenizer.h - one C API over the two tokenizers a model directory may name:
 * SentencePiece (tokenizer.model, through a C++ shim that never lets an
 * exception or absl::Status cross into C) and the fairseq dictionary
 * (dict.txt), including the byte-symbol form of the paper's enwik8 models.
 *
 * Errors follow seqboat.h: 0 or a negative sb_status, message in *err.
 * An sb_tokenizer is read-only after loading and may be shared by threads;
 * an sb_detok belongs to one thread.
 */
#ifndef SEQBOAT_TOKENIZER_H
#define SEQBOAT_TOKENIZER_H

#include "scheduler.h"
#include "seqboat.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sb_tokenizer sb_tokenizer;

/* Loads the tokenizer file at `path`. For SB_TOK_FAIRSEQ, `bytes` chooses
 * the byte-symbol form (every symbol is a byte's decimal value, newline is
 * </s>) or detects it (SB_BYTES_AUTO: all symbols are distinct decimal
 * numbers 0..255). For SentencePiece `bytes` is ignored. Caller frees. */
sb_tokenizer *sb_tokenizer_load(sb_tok_kind kind, const char *path,
                                sb_bytes_mode bytes, sb_error *err);

/* Loads the tokenizer a model's config names (path relative to the model
 * directory; bytes mode from the config unless `bytes_override` is not
 * SB_BYTES_AUTO). */
sb_tokenizer *sb_tokenizer_load_for_model(const sb_model *m,
                                          sb_bytes_mode bytes_override,
                                          sb_error *err);
void sb_tokenizer_free(sb_tokenizer *t);

int sb_tokenizer_vocab_size(const sb_tokenizer *t);
int sb_tokenizer_bos(const sb_tokenizer *t);   /* -1 if none */
int sb_tokenizer_eos(const sb_tokenizer *t);
int sb_tokenizer_pad(const sb_tokenizer *t);
int sb_tokenizer_unk(const sb_tokenizer *t);
bool sb_tokenizer_is_bytes(const sb_tokenizer *t); /* fairseq byte form */
sb_tok_kind sb_tokenizer_kind(const sb_tokenizer *t);

/* Encodes len bytes of UTF-8 text (invalid UTF-8 is SB_ERR_FORMAT naming
 * the byte offset). With add_bos the model's beginning-of-sequence id comes
 * first (for fairseq dictionaries that is </s>, id 2, as fairseq's
 * generator does; a SentencePiece model without bos gets none). Newlines:
 * SentencePiece encodes them as its model does; fairseq word dictionaries
 * split each line on ASCII whitespace, map each word to its id (unknown
 * words to <unk>, 3) and end each newline-terminated line with </s>, as
 * fairseq's encode_line(append_eos=True) does for the lines of a file; a
 * last line without a newline gets no </s>, as fairseq strips it from a
 * prompt for generation (so "a b\nc" is a b </s> c). The byte form maps
 * every byte to the id of its decimal symbol, "\n" to </s>, and a byte
 * without a symbol to <unk>. *ids is malloc'd and owned by the caller. */
int sb_tokenizer_encode(const sb_tokenizer *t, const char *text, size_t len,
                        bool add_bos, int32_t **ids, size_t *n_ids,
                        sb_error *err);

/* Decodes ids to text (malloc'd, NUL-terminated, caller frees; *len
 * excludes the NUL, and a SentencePiece <0x00> piece can put a NUL inside).
 * Ids out of range are SB_ERR_ARG. Control ids (bos/pad) are skipped.
 * SentencePiece: the processor's own decoding. fairseq: <s> and <pad> are
 * skipped; </s> is a newline, except a first </s>, which is the bos marker
 * and gives nothing (so decode(encode(text, add_bos)) == text); words are
 * joined by one space, with no space next to a newline; <unk> is "<unk>"
 * in the word form and U+FFFD in the byte form, and byte sequences that
 * are not UTF-8 become U+FFFD per byte as SentencePiece decodes its byte
 * pieces. The result equals what sb_detok streams for the same ids. */
int sb_tokenizer_decode(const sb_tokenizer *t, const int32_t *ids, size_t n,
                        char **text, size_t *len, sb_error *err);

/* The piece string of one id as the tokenizer file spells it (for
 * `tokenize` and debugging); NULL if out of range. */
const char *sb_tokenizer_piece(const sb_tokenizer *t, int32_t id);

/* Streaming decoder: feed ids one at a time, get back only whole UTF-8
 * characters, never a partial sequence. Bytes that cannot become valid
 * UTF-8 are replaced by U+FFFD. After reset(d, true) (and when new), the
 * pushed outputs plus the flush equal sb_tokenizer_decode of the same ids
 * (for SentencePiece models with a denormalizer, before denormalization).
 * To continue after a prompt exactly, push the prompt's ids first and
 * discard their text. */
typedef struct sb_detok sb_detok;
sb_detok *sb_detok_new(const sb_tokenizer *t, sb_error *err);
void sb_detok_free(sb_detok *d);
/* Forget pending bytes and start as at the beginning of a text (the first
 * piece's leading space is dropped again, as SentencePiece decoding does;
 * a fairseq leading </s> is the bos marker again). `at_start` false
 * continues mid-text: the space is kept, a first </s> is a newline, and a
 * first fairseq word gets a space before it. */
void sb_detok_reset(sb_detok *d, bool at_start);
/* Appends the text of one id. *out and *out_len: the complete characters now
 * available (valid until the next call on d). */
int sb_detok_push(sb_detok *d, int32_t id, const char **out, size_t *out_len,
                  sb_error *err);
/* The pending incomplete bytes at the end, as U+FFFD replacements. */
void sb_detok_flush(sb_detok *d, const char **out, size_t *out_len);

/* The streaming decoder above as the scheduler's detokenizer (scheduler.h):
 * each slot gets its own sb_detok of t. t must outlive the scheduler. */
sb_sched_text sb_tokenizer_sched_text(const sb_tokenizer *t);

/* UTF-8 helpers shared by the CLI. sb_utf8_valid returns the offset of
 * the first invalid byte, or len if all are valid. */
size_t sb_utf8_valid(const char *s, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* SEQBOAT_TOKENIZER_H */
