/* serve_cache.h - the server's state cache: snapshots of sequences' states
 * keyed by the tokens they hold, so that a request whose tokens extend a
 * cached sequence (the next turn of a conversation) starts from that
 * snapshot and reads only its new tokens.
 *
 * An entry is a whole state (sb_state_bytes, constant for a model) plus its
 * token sequence. Entries are found by a 64-bit hash of their tokens; a
 * lookup computes the hash of every prefix of the request's tokens and
 * takes the longest prefix that an entry holds, comparing every token (a
 * hash alone is never trusted). Entries are evicted least recently used
 * first, so that their bytes stay within a bound.
 *
 * An entry also remembers the reply that ended it (the completion's last
 * tokens and its text): a chat client sends a reply back as text, and
 * tokenizing that text again need not give the tokens that were sampled,
 * so the conversation is rendered with the tokens the cache knows.
 *
 * With a directory, entries are also written there (the state in the
 * format of sb_state_save, with the model's fingerprint, and its tokens in
 * a file of their own) and read back by the next server: a file of another
 * model, a corrupt or a truncated file is ignored with a log line.
 *
 * Thread-safe: every function may be called from any thread. */
#ifndef SB_SERVE_CACHE_H
#define SB_SERVE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "seqboat.h"

typedef struct serve_cache serve_cache;
typedef struct serve_cache_entry serve_cache_entry;

/* A cache of at most max_bytes (an entry that alone exceeds it is not
 * kept) for states of m. dir: NULL, or a directory (created if missing)
 * whose valid entries are loaded now, most recent first, as far as
 * max_bytes allows. NULL with *err on failure (the directory cannot be
 * made or read). Caller frees. */
serve_cache *serve_cache_new(const sb_model *m, size_t max_bytes, const char *dir,
                             sb_error *err);
/* Frees every entry (files on disk stay). NULL is a no-op. */
void serve_cache_free(serve_cache *c);

/* The hash that keys an entry: of tokens[0..n). */
uint64_t serve_cache_hash(const int32_t *tokens, size_t n);

/* Finds the longest entry whose tokens are a prefix of tokens[0..limit)
 * and calls use(state, its length, arg) with the cache locked (so the
 * state stays valid during the call; use must not call the cache). Returns
 * that length, or 0 (use not called). Counts a hit or a miss. */
size_t serve_cache_use_prefix(serve_cache *c, const int32_t *tokens, size_t limit,
                              void (*use)(const sb_state *st, size_t n, void *arg),
                              void *arg);

/* The same without counting a hit or a miss (for the server's own
 * look-ups). */
size_t serve_cache_probe_prefix(serve_cache *c, const int32_t *tokens, size_t limit,
                                void (*use)(const sb_state *st, size_t n, void *arg),
                                void *arg);

/* If an entry holds prefix[0..n_prefix) followed by a reply whose text is
 * text[0..len), returns true with that reply's tokens in *out (malloc'd,
 * caller frees) and *open_user (the reply ended at the chat template's
 * own stop, which the state holds). */
bool serve_cache_reply_tokens(serve_cache *c, const int32_t *prefix, size_t n_prefix,
                              const char *text, size_t len, int32_t **out,
                              size_t *n_out, bool *open_user);

/* Stores st (taking ownership: it is freed if not kept) as the state after
 * tokens[0..n) (copied); its last n_reply tokens are a reply with text
 * reply[0..reply_len). An entry with the same tokens is kept instead (and
 * becomes the most recently used). Returns the entry pinned for
 * serve_cache_persist, or NULL when nothing is left to persist (no
 * directory, not kept, out of memory). */
serve_cache_entry *serve_cache_store(serve_cache *c, const int32_t *tokens, size_t n,
                                     sb_state *st, size_t n_reply, const char *reply,
                                     size_t reply_len, bool open_user);

/* Writes a pinned entry into the directory (two files, each atomically)
 * unless it was evicted meanwhile, then unpins it. Slow (a state is
 * megabytes): call it outside the generation thread. A write failure is
 * logged, never fatal. */
void serve_cache_persist(serve_cache *c, serve_cache_entry *e);

typedef struct serve_cache_stats {
	uint64_t hits, misses;   /* lookups that found a prefix, or none */
	uint64_t stores, evictions;
	size_t entries;
	size_t bytes, max_bytes;
} serve_cache_stats;

void serve_cache_stats_get(serve_cache *c, serve_cache_stats *out);

#endif
