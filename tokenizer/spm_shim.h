/*
 * spm_shim.h - a C view of SentencePiece's C++ processor. Every call
 * catches C++ exceptions and turns SentencePiece's util::Status into an
 * sb_error, so nothing of C++ reaches the C code. Internal to tokenizer/.
 */
#ifndef SB_SPM_SHIM_H
#define SB_SPM_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "seqboat.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sb_spm sb_spm;

typedef enum sb_spm_type {
	SB_SPM_NORMAL,   /* also user-defined and unused pieces */
	SB_SPM_CONTROL,
	SB_SPM_UNKNOWN,
	SB_SPM_BYTE,
} sb_spm_type;

/* What decoding needs from the model's normalizer and trainer specs. */
typedef struct sb_spm_decode_opts {
	bool add_dummy_prefix;
	bool remove_extra_whitespaces;
	const char *unk_surface;   /* owned by the sb_spm */
} sb_spm_decode_opts;

sb_spm *sb_spm_load(const char *path, sb_error *err);
void sb_spm_free(sb_spm *s);

int sb_spm_size(const sb_spm *s);
int sb_spm_bos(const sb_spm *s);   /* -1 if none */
int sb_spm_eos(const sb_spm *s);
int sb_spm_pad(const sb_spm *s);
int sb_spm_unk(const sb_spm *s);
/* The piece of id (0 <= id < size), valid while s lives. */
const char *sb_spm_piece(const sb_spm *s, int id);
sb_spm_type sb_spm_type_of(const sb_spm *s, int id);
void sb_spm_decode_options(const sb_spm *s, sb_spm_decode_opts *o);

/* EncodeAsIds; *ids malloc'd with room for `reserve` ids in front. */
int sb_spm_encode(const sb_spm *s, const char *text, size_t len,
                  size_t reserve, int32_t **ids, size_t *n, sb_error *err);
/* DecodeIds; *text malloc'd and NUL-terminated. Ids must be in range. */
int sb_spm_decode(const sb_spm *s, const int32_t *ids, size_t n, char **text,
                  size_t *len, sb_error *err);

#ifdef __cplusplus
}
#endif

#endif
