/*
 * seqboat.h - the public header of libseqboat's engine. The generation
 * scheduler built on it (many sequences, continuous batching) has its own:
 * scheduler.h.
 *
 * libseqboat runs SeqBoat language models (Ren et al., NeurIPS 2023) as
 * docs/computation.md defines them: a damped multi-head EMA plus a gated
 * attention unit that a router switches on for some tokens, attending over
 * the last W activated tokens. Generation keeps a constant-size state per
 * sequence (sb_state) and does O(1) work per token.
 *
 * Conventions for every function here:
 *   - Status-returning functions return 0 (SB_OK) on success or a negative
 *     sb_status, and fill *err (when err is not NULL) with a message that
 *     names the file, the field and what was expected.
 *   - Constructors return NULL on failure; every *_free accepts NULL.
 *   - The library never prints, exits or aborts.
 *   - Thread-safety: an sb_model is immutable after loading and may be
 *     shared by any number of threads. An sb_ctx, sb_state, sb_sampler or
 *     sb_tokenizer belongs to one thread at a time.
 */
#ifndef SEQBOAT_H
#define SEQBOAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SB_VERSION "0.1.0"

/* ------------------------------------------------------------------ errors */

typedef enum sb_status {
	SB_OK = 0,
	SB_ERR_ARG = -1,         /* invalid argument from the caller (usage) */
	SB_ERR_FORMAT = -2,      /* malformed or inconsistent input data */
	SB_ERR_IO = -3,          /* open/read/write/mmap failed */
	SB_ERR_NOMEM = -4,       /* allocation failed or size overflowed */
	SB_ERR_UNSUPPORTED = -5, /* valid input that seqboat does not run */
	SB_ERR_DEVICE = -6,      /* a device (GPU) call failed */
} sb_status;

#define SB_ERROR_MAX 512

typedef struct sb_error {
	int code;                /* the sb_status returned with it */
	char msg[SB_ERROR_MAX];  /* one line, no trailing newline */
} sb_error;

/* Fills err (if not NULL) and returns code, so callers can write
 * `return sb_error_set(err, SB_ERR_FORMAT, "...", ...);`. */
int sb_error_set(sb_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefixes err->msg with "prefix: " (e.g. a file name). Returns err->code. */
int sb_error_prefix(sb_error *err, const char *prefix);

/* Overflow-checked size arithmetic for every size computed from untrusted
 * input. Return false (and leave *out unspecified) on overflow. */
bool sb_size_mul(size_t a, size_t b, size_t *out);
bool sb_size_add(size_t a, size_t b, size_t *out);

/* ------------------------------------------------------------------ files */

/* Reads a whole file into a malloc'd buffer (caller frees) with a NUL after
 * its last byte. More than `limit` bytes is SB_ERR_FORMAT, found before the
 * file is read when its size is known and after limit + 1 bytes otherwise
 * (a pipe, /dev/zero), so memory never exceeds the limit. `what` names the
 * kind of file in messages ("a dictionary"). A directory or a failed read
 * is SB_ERR_IO. The _fd form reads an open descriptor (not closed), with
 * `label` naming it in messages. */
int sb_file_read(const char *path, size_t limit, const char *what, char **buf,
                 size_t *len, sb_error *err);
int sb_file_read_fd(int fd, const char *label, size_t limit, const char *what,
                    char **buf, size_t *len, sb_error *err);

/* What `path` may be replaced as: a missing name or a regular file (with
 * dir: a directory) is itself; a symbolic link is followed to the regular
 * file (directory) it names; anything else (a FIFO, a device, a socket, a
 * directory, a dangling link) is SB_ERR_IO naming path and what it is, and
 * an empty name SB_ERR_ARG. *target: malloc'd, the caller frees it. */
int sb_file_target(const char *path, bool dir, char **target, sb_error *err);

/* A file replaced atomically: sb_file_out_open checks the target as
 * sb_file_target does and creates a temporary file next to it (a new file
 * gets the mode the umask gives, a replaced one keeps its mode); write to
 * f; sb_file_out_commit flushes, fsyncs and renames it over the target;
 * sb_file_out_abort removes it. Readers see the old file or the whole new
 * one, never half. Commit and abort release everything (also on error);
 * abort accepts a zeroed or already released sb_file_out. */
typedef struct sb_file_out {
	FILE *f;
	char *target;   /* the file that will be replaced */
	char *tmp;      /* the temporary file */
	char *label;    /* the name given, for messages */
} sb_file_out;

int sb_file_out_open(sb_file_out *o, const char *path, sb_error *err);
int sb_file_out_commit(sb_file_out *o, sb_error *err);
void sb_file_out_abort(sb_file_out *o);
/* The three in one: replaces path with len bytes of data. */
int sb_file_write(const char *path, const void *data, size_t len, sb_error *err);

/* ------------------------------------------------------------ safetensors */

typedef enum sb_dtype {
	SB_DTYPE_F32, SB_DTYPE_F16, SB_DTYPE_BF16, SB_DTYPE_F64,
	SB_DTYPE_I64, SB_DTYPE_I32, SB_DTYPE_I16, SB_DTYPE_I8,
	SB_DTYPE_U64, SB_DTYPE_U32, SB_DTYPE_U16, SB_DTYPE_U8,
	SB_DTYPE_BOOL,
	SB_DTYPE_COUNT
} sb_dtype;

/* Bytes per element, and the safetensors spelling ("F32", "BF16", ...). */
size_t sb_dtype_size(sb_dtype dt);
const char *sb_dtype_name(sb_dtype dt);

#define SB_MAX_DIMS 8

typedef struct sb_tensor {
	const char *name;
	sb_dtype dtype;
	int ndim;
	uint64_t shape[SB_MAX_DIMS];
	uint64_t numel;          /* product of shape (1 for a scalar) */
	size_t nbytes;
	const void *data;        /* aligned to sb_dtype_size(dtype) */
} sb_tensor;

typedef struct sb_st_file sb_st_file;

/* Opens and validates a safetensors file (read-only mmap). Every rule is
 * checked before the file is returned: header length bounds (<= 100 MB and
 * inside the file), well-formed JSON object, no duplicate names, known
 * dtypes, shape products without overflow, byte count == dtype size x numel,
 * offsets in range, contiguous, non-overlapping and covering the data area
 * exactly. A tensor whose data is not aligned to its element size is copied
 * into an aligned buffer owned by the file. The caller owns the result and
 * frees it with sb_st_close(); tensor pointers live until then. */
sb_st_file *sb_st_open(const char *path, sb_error *err);

/* The same from a memory buffer (not copied: it must outlive the result).
 * `label` names the source in error messages. */
sb_st_file *sb_st_open_memory(const void *buf, size_t len, const char *label,
                              sb_error *err);

size_t sb_st_count(const sb_st_file *f);
const sb_tensor *sb_st_tensor_at(const sb_st_file *f, size_t i);
/* NULL if absent. */
const sb_tensor *sb_st_find(const sb_st_file *f, const char *name);
/* The "__metadata__" string map entry, or NULL. */
const char *sb_st_metadata(const sb_st_file *f, const char *key);
/* Size of the whole file in bytes. */
size_t sb_st_file_size(const sb_st_file *f);
void sb_st_close(sb_st_file *f);

typedef struct sb_st_entry {
	const char *name;
	sb_dtype dtype;
	int ndim;
	uint64_t shape[SB_MAX_DIMS];
	const void *data;        /* numel x dtype size bytes */
} sb_st_entry;

/* Writes a safetensors file atomically (a temporary file in the same
 * directory, fsync, rename): a reader never sees a half-written file.
 * meta_kv is NULL or a NULL-terminated list of key, value, key, value... */
int sb_st_write(const char *path, const sb_st_entry *entries, size_t n,
                const char *const *meta_kv, sb_error *err);

/* ---------------------------------------------------------------- config */

typedef enum { SB_POS_ROTARY, SB_POS_SIMPLE } sb_pos_kind;
typedef enum { SB_ATTN_SOFTMAX, SB_ATTN_RELU2, SB_ATTN_LAPLACE } sb_attn_kind;
typedef enum { SB_NORM_LAYERNORM, SB_NORM_SCALENORM, SB_NORM_RMSNORM } sb_norm_kind;
typedef enum { SB_ACT_SILU, SB_ACT_GELU, SB_ACT_RELU } sb_act_kind;
typedef enum { SB_TOK_SENTENCEPIECE, SB_TOK_FAIRSEQ } sb_tok_kind;
/* fairseq dictionaries: auto-detect the byte-symbol form, or force it. */
typedef enum { SB_BYTES_AUTO = -1, SB_BYTES_OFF = 0, SB_BYTES_ON = 1 } sb_bytes_mode;

#define SB_CONFIG_STR 1024   /* longest string value, bytes, NUL included */

/* The parsed config.yaml of a model directory (docs/model-format.md). */
typedef struct sb_config {
	/* architecture: */
	int vocab_size;          /* V: rows of the embedding */
	int embed_dim;           /* D */
	int z_dim;               /* Z (even: rotary pairs) */
	int hidden_dim;          /* H */
	int n_dim;               /* N: EMA order */
	int layers;              /* L */
	int window;              /* W: attention window in activated tokens */
	int ffn_dim;             /* F: 0 means no FFN */
	int max_positions;       /* M: range of the simple relative bias */
	int truncation_length;   /* provenance only: seqboat's EMA is exact */
	sb_pos_kind rel_pos;
	sb_attn_kind attention;
	sb_norm_kind norm;
	sb_act_kind activation;
	bool normalize_before;
	bool affine_final_norm;
	bool scale_embedding;
	bool tied_embeddings;
	/* tokenizer: */
	sb_tok_kind tokenizer;
	char tokenizer_file[SB_CONFIG_STR];   /* relative to the model directory */
	sb_bytes_mode byte_symbols;           /* fairseq only */
	int bos_id, eos_id, pad_id, unk_id;   /* -1 when the model has none */
	/* chat template (all may be empty; see docs/model-format.md): */
	char chat_system_prefix[SB_CONFIG_STR];
	char chat_system_suffix[SB_CONFIG_STR];
	char chat_user_prefix[SB_CONFIG_STR];
	char chat_user_suffix[SB_CONFIG_STR];
	char chat_assistant_prefix[SB_CONFIG_STR];
	char chat_assistant_suffix[SB_CONFIG_STR];
	bool has_chat_template;  /* false: the documented base-model default */
	/* provenance (free text, may be empty): */
	char name[SB_CONFIG_STR];
	char source[SB_CONFIG_STR];
	char license[SB_CONFIG_STR];
} sb_config;

/* Reads and validates config.yaml: unknown, missing and duplicate keys,
 * wrong types, out-of-range values, anchors/aliases, several documents and
 * the unsupported official options (docs/computation.md section 6) are refused, naming the
 * key. `label` names the source in messages. */
int sb_config_load(const char *path, sb_config *cfg, sb_error *err);
int sb_config_parse(const char *buf, size_t len, const char *label,
                    sb_config *cfg, sb_error *err);
/* Writes cfg as config.yaml text that sb_config_parse reads back equal.
 * Returns a malloc'd NUL-terminated string the caller frees, or NULL. */
char *sb_config_to_yaml(const sb_config *cfg, sb_error *err);

const char *sb_pos_name(sb_pos_kind k);
const char *sb_attn_name(sb_attn_kind k);
const char *sb_norm_name(sb_norm_kind k);
const char *sb_act_name(sb_act_kind k);

/* ----------------------------------------------------------------- model */

typedef struct sb_model sb_model;

/* Loads a model directory (config.yaml + model.safetensors). Every tensor
 * the config implies must be present with the exact shape, in F32, F16 or
 * BF16; unknown tensors are refused. Weights stay memory-mapped. The caller
 * owns the model; it is immutable and thread-safe once returned. */
sb_model *sb_model_load(const char *dir, sb_error *err);
void sb_model_free(sb_model *m);

const sb_config *sb_model_config(const sb_model *m);
const char *sb_model_dir(const sb_model *m);
uint64_t sb_model_n_params(const sb_model *m);   /* tied weights counted once */
size_t sb_model_file_bytes(const sb_model *m);   /* size of model.safetensors */
/* The storage dtype of the large matrices (the most common one). */
sb_dtype sb_model_weight_dtype(const sb_model *m);
/* Reads every weight and refuses a NaN or an infinity (SB_ERR_FORMAT
 * naming the tensor and the element). Loading checks only the small
 * tensors it widens to float32 (norms, biases, EMA parameters, q8
 * scales); this is the full scan behind `--check`. */
int sb_model_check_weights(const sb_model *m, sb_error *err);
/* A 64-bit fingerprint of config and weights, recorded in saved states. */
uint64_t sb_model_fingerprint(const sb_model *m);

/* Weight formats a model can be rewritten in. q8: each weight an int8
 * with one F16 scale per block of 32 of its row (weight = q * scale). */
typedef enum sb_quant_type {
	SB_QUANT_F32, SB_QUANT_F16, SB_QUANT_BF16, SB_QUANT_Q8
} sb_quant_type;

/* "f32", "f16", "bf16", "q8", and back (false for anything else). */
const char *sb_quant_type_name(sb_quant_type t);
bool sb_quant_type_parse(const char *s, sb_quant_type *t);

/* Writes a copy of model m as the new directory out_dir whose weight
 * matrices (embedding, projections, FFN) are stored as type; norms, EMA
 * parameters and biases stay float32; config.yaml and the tokenizer file
 * are copied unchanged. The directory is built under a temporary name
 * next to out_dir, loaded back, and only then renamed into place: a failed
 * or interrupted run leaves no out_dir. SB_ERR_ARG if out_dir exists (a
 * dangling link counts) or is empty, SB_ERR_IO, SB_ERR_NOMEM. */
int sb_model_quantize(const sb_model *m, const char *out_dir, sb_quant_type type,
                      sb_error *err);

/* ----------------------------------------------------------------- state */

/* The per-sequence state: per layer the EMA state h (D x N) and a ring of
 * the keys (Z), values (H) and positions of the last W+1 activated tokens,
 * plus counters. Its size depends on the model only, never on how many
 * tokens were read. A state lives where a backend keeps it: on the host
 * (sb_state_new) or on a context's device (sb_ctx_state_new); every
 * function below works for every placement. */
typedef struct sb_state sb_state;

/* Exact bytes of one state's buffers (EMA + ring + counters). */
size_t sb_state_bytes(const sb_model *m);

/* What those bytes are made of; total == sb_state_bytes(m). */
typedef struct sb_state_sizes {
	size_t total;
	size_t ema;       /* L x D x N floats */
	size_t ring;      /* L x (W+1) x (Z+H) floats + their positions */
	size_t counters;  /* ring lengths and heads, activation and token counts */
} sb_state_sizes;
sb_state_sizes sb_state_sizes_of(const sb_model *m);

/* Memory budgets for state-sized allocations (lib/budget.c). The size of
 * a state is the model's (a legal window of 2^20 makes it gigabytes), so
 * the number of states a run holds at once is decided up front.
 * sb_mem_physical: this machine's physical memory in bytes (0 unknown).
 * sb_state_budget: how many of `want` sequences fit in `limit` bytes when
 * each holds `copies` states (1 for a batch slot; a conversation with its
 * undo snapshots holds more): *fit = min(want, limit / (copies x state)).
 * When not even one sequence fits, SB_ERR_FORMAT naming the config fields
 * that make the state large (window, z_dim, hidden_dim or embed_dim,
 * n_dim; layers), the bytes, and `limit_name` (the flag, e.g. "--mem").
 * Allocates nothing; thread-safe. */
size_t sb_mem_physical(void);
int sb_state_budget(const sb_model *m, size_t limit, const char *limit_name, size_t copies,
                    size_t want, size_t *fit, sb_error *err);

/* A state in host memory (the CPU backend's). */
sb_state *sb_state_new(const sb_model *m, sb_error *err);
void sb_state_free(sb_state *s);
void sb_state_reset(sb_state *s);
/* Copies src into dst (same model), whatever their placements: host to
 * device and back is how a state moves (snapshots, undo, shared prefixes).
 * No allocation. Returns 0, SB_ERR_ARG for different models, or
 * SB_ERR_DEVICE when a device copy failed (dst is then unspecified). */
int sb_state_copy(sb_state *dst, const sb_state *src);
/* A new state equal to src, in the same place; caller frees. */
sb_state *sb_state_clone(const sb_state *src, sb_error *err);
/* "cpu", or the device of the context that made it ("cuda:0"). */
const char *sb_state_device(const sb_state *s);

uint64_t sb_state_n_tokens(const sb_state *s);          /* tokens read */
uint64_t sb_state_n_activated(const sb_state *s, int layer);

/* Serialization: magic "SBSTATE\0", a format version, the model
 * fingerprint, then the buffers. The size is sb_state_serialized_size().
 * The bytes are the same for every placement. */
size_t sb_state_serialized_size(const sb_model *m);
int sb_state_serialize(const sb_state *s, void *buf, size_t cap, sb_error *err);
int sb_state_deserialize(sb_state *s, const void *buf, size_t len,
                         const char *label, sb_error *err);
/* File forms; save is atomic (temporary file + rename). */
int sb_state_save(const sb_state *s, const char *path, sb_error *err);
int sb_state_load(sb_state *s, const char *path, sb_error *err);

/* --------------------------------------------------------------- forward */

/* A compute context: a backend (the CPU, or a device where one is built
 * in), its threads and scratch sized once for the model, the largest
 * prefill piece and the batch capacity. One per thread of use; a context
 * serves any number of states of its model that live where it computes. */
typedef struct sb_ctx sb_ctx;

typedef struct sb_ctx_params {
	int n_threads;        /* host threads; <= 0: all cores */
	float act_bias;       /* router shift (docs/computation.md section 2): positive = fewer activations */
	size_t max_batch;     /* most states one sb_decode_batch call takes (>= 1) */
	const char *device;   /* NULL or "cpu"; "cuda" or "cuda:N" where built in */
} sb_ctx_params;

/* n_threads 0 (all cores), act_bias 0, max_batch 512, device NULL. */
sb_ctx_params sb_ctx_default_params(void);

/* p NULL: the defaults. SB_ERR_ARG for a malformed device or max_batch 0,
 * SB_ERR_UNSUPPORTED for a device this build has no backend for. */
sb_ctx *sb_ctx_new(const sb_model *m, const sb_ctx_params *p, sb_error *err);
void sb_ctx_free(sb_ctx *c);
const sb_model *sb_ctx_model(const sb_ctx *c);
/* Router shift (docs/computation.md section 2): positive = fewer activations. */
void sb_ctx_set_act_bias(sb_ctx *c, float act_bias);
float sb_ctx_act_bias(const sb_ctx *c);
int sb_ctx_threads(const sb_ctx *c);
/* "cpu", "cuda:0", ... */
const char *sb_ctx_device(const sb_ctx *c);
/* The device's own name ("NVIDIA H200"); "" for the CPU. */
const char *sb_ctx_device_name(const sb_ctx *c);
/* A new state where c computes (equal to sb_state_new on the CPU). */
sb_state *sb_ctx_state_new(sb_ctx *c, sb_error *err);

/* What a forward call may write besides advancing the state. Any pointer
 * may be NULL. Row t of the call's tokens lands at index `offset + t`:
 *   logits      (offset+T, V) rows: prediction after each token
 *   act         (L, stride)   act[l*stride + offset + t] = 1 if routed
 *   hidden      (L, stride, D) each block's output (after its FFN)
 *   last_logits (V)           the prediction after the call's last token */
typedef struct sb_outputs {
	float *logits;
	float *last_logits;
	uint8_t *act;
	float *hidden;
	size_t stride;
	size_t offset;
} sb_outputs;

/* Reads T tokens into the state in one call, continuing from whatever the
 * state holds (it must live where the context computes). Long inputs are worked through in pieces of bounded size, so
 * memory does not grow with T. Computes the same numbers as T calls of
 * sb_decode. Token ids must be in [0, V). */
int sb_prefill(sb_ctx *c, sb_state *s, const int32_t *tokens, size_t T,
               const sb_outputs *out, sb_error *err);

/* Reads one token; writes its logits (V floats) if logits is not NULL.
 * Allocates nothing. */
int sb_decode(sb_ctx *c, sb_state *s, int32_t token, float *logits,
              sb_error *err);

/* Decodes one token for each of B states at once (B <= the context's batch
 * capacity, see sb_ctx_max_batch); logits is (B, V). The numbers are those
 * of B calls of sb_decode. */
int sb_decode_batch(sb_ctx *c, sb_state *const *states, const int32_t *tokens,
                    size_t B, float *logits, sb_error *err);
size_t sb_ctx_max_batch(const sb_ctx *c);

/* Reads several prompts at once: the n[i] >= 1 tokens tokens[i] into
 * states[i] (B distinct states), in one pass over the weights for all of
 * them (blocks of several sequences' rows), and writes each prompt's last
 * logits into row i of last_logits (B, V) when it is not NULL. What one
 * sequence gets does not depend on the others in the call (the CPU sums
 * every number as a single decoded row does): equal to sb_prefill within
 * rounding, and bit for bit what the same call with that sequence alone
 * gives. Meant for short prompts; a long one reads faster alone through
 * sb_prefill. */
int sb_prefill_batch(sb_ctx *c, sb_state *const *states, const int32_t *const *tokens,
                     const size_t *n, size_t B, float *last_logits, sb_error *err);

/* --------------------------------------------------------------- sampler */

typedef struct sb_sampler_params {
	float temp;              /* 0 = greedy (argmax) */
	int top_k;               /* <= 0: off */
	float top_p;             /* 1: off */
	float min_p;             /* 0: off */
	float repeat_penalty;    /* 1: off (llama.cpp semantics) */
	int repeat_last_n;       /* window of past tokens for the penalties */
	float presence_penalty;  /* 0: off */
	float frequency_penalty; /* 0: off */
	uint64_t seed;
	const int32_t *bias_ids; /* logit bias: n_bias (id, value) pairs */
	const float *bias_values;
	size_t n_bias;
} sb_sampler_params;

/* Defaults as llama.cpp: temp 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * repeat_penalty 1, repeat_last_n 64, no presence/frequency penalty, seed 0. */
sb_sampler_params sb_sampler_default_params(void);

typedef struct sb_sampler sb_sampler;

/* Validates params against the vocabulary size (SB_ERR_ARG naming the
 * field). Copies the logit bias. Caller frees. */
sb_sampler *sb_sampler_new(const sb_sampler_params *p, int n_vocab,
                           sb_error *err);
void sb_sampler_free(sb_sampler *s);
/* Forget the token history and reseed the RNG. */
void sb_sampler_reset(sb_sampler *s, uint64_t seed);
/* Records a token (prompt or generated) for the penalties. */
void sb_sampler_accept(sb_sampler *s, int32_t token);
/* Picks the next token from logits (n_vocab floats, modified in place).
 * Same seed, history and logits give the same token on the same build. */
int32_t sb_sampler_sample(sb_sampler *s, float *logits);

/* Stop strings, matched on the generated byte stream across token
 * boundaries. sb_stop_push() appends text and returns how many bytes are
 * now safe to emit (they can no longer be the start of a stop string);
 * *matched is set when a stop string completed (its bytes are never
 * emitted). */
typedef struct sb_stop sb_stop;
sb_stop *sb_stop_new(const char *const *stops, size_t n, sb_error *err);
void sb_stop_free(sb_stop *s);
void sb_stop_reset(sb_stop *s);
/* Appends len bytes; *out and *out_len receive the bytes now safe to print
 * (valid until the next call). */
int sb_stop_push(sb_stop *s, const char *text, size_t len, const char **out,
                 size_t *out_len, bool *matched);
/* At the end of generation: the held-back bytes that did not complete a
 * stop string. */
void sb_stop_flush(sb_stop *s, const char **out, size_t *out_len);
/* The index (into the list given to sb_stop_new) of the stop string that
 * completed, or -1 if none has. */
int sb_stop_which(const sb_stop *s);

#ifdef __cplusplus
}
#endif

#endif /* SEQBOAT_H */
