/* template.h - a model's chat template (config.yaml's chat: mapping, or the
 * documented base-model default) and the text of each piece of a
 * conversation as `chat` and `serve` read it into the state.
 *
 * A conversation is read piece by piece, each piece tokenized on its own,
 * so a longer conversation's tokens always extend a shorter one's:
 *
 *     [bos] system_prefix SYSTEM system_suffix       (cli_template_encode_system)
 *     user_prefix TEXT user_suffix assistant_prefix  (cli_template_encode_user)
 *     REPLY                                          (the generated tokens)
 *     assistant_suffix                               (after each reply)
 *
 * A reply also ends where the model starts the next user turn by itself:
 * at assistant_suffix + user_prefix without its trailing blanks (`stop`). */
#ifndef SB_CLI_TEMPLATE_H
#define SB_CLI_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "seqboat.h"
#include "tokenizer.h"

/* The pieces (not the text between them) may hold {bos} and {eos}: the
 * model's beginning- and end-of-sequence tokens, read as those ids. */
#define CLI_TEMPLATE_MAX_STOPS 4

typedef struct cli_template {
	char sys_prefix[SB_CONFIG_STR], sys_suffix[SB_CONFIG_STR];
	char user_prefix[SB_CONFIG_STR], user_suffix[SB_CONFIG_STR];
	char asst_prefix[SB_CONFIG_STR], asst_suffix[SB_CONFIG_STR];
	char stop[2 * SB_CONFIG_STR]; /* "" if none (blank, no user prefix, a {token}) */
	/* More stop strings that end a reply (a template file's "stop", the
	 * base-model default's blank line). */
	char stops[CLI_TEMPLATE_MAX_STOPS][SB_CONFIG_STR];
	size_t n_stops;
	const char *name;        /* "config.yaml", "base model", a file's path, "raw" */
} cli_template;

/* The model's template, or the base-model default ("User: ", "Assistant:",
 * newlines) when config.yaml has no chat: mapping. */
void cli_template_init(cli_template *t, const sb_config *cfg);

/* The template chat uses for a model: config.yaml's chat: mapping, else
 * the default for a base model, chosen from what the model was trained
 * on: "User: TEXT", "Assistant: REPLY" and the system text as lines,
 * where a line ends with "\n" when the tokenizer has a newline piece and
 * with {eos} when its newline is the end-of-sequence token (a model
 * trained on one document per line, such as the bundled one, for which a
 * "\n" is a byte it never saw). A reply ends at the end-of-sequence token,
 * at a blank line ("\n\n") or where the model starts the next "User:". */
void cli_template_for_model(cli_template *t, const sb_config *cfg, const sb_tokenizer *tok);

/* No template: the text typed is read as it is and the model continues
 * it (chat --no-conversation). */
void cli_template_raw(cli_template *t);

/* A template file (chat --chat-template FILE): one JSON object with the
 * keys system_prefix, system_suffix, user_prefix, user_suffix,
 * assistant_prefix, assistant_suffix (strings, each optional: "" when
 * absent) and stop (a string or an array of up to 4 strings). Unknown keys
 * and wrong types are refused naming the file and the field. */
int cli_template_load(cli_template *t, const char *path, sb_error *err);

/* Encodes a piece of a conversation: parts[i] are concatenated, and
 * where literal[i] is false, {bos} and {eos} in that part become those
 * ids; the text between them is tokenized as one string each (the first
 * with the beginning-of-sequence id when add_bos). *ids is malloc'd. */
int cli_template_encode(const sb_tokenizer *tok, const char *const *parts, const bool *literal,
                        size_t n, bool add_bos, int32_t **ids, size_t *n_ids, sb_error *err);

/* The system piece (with the beginning-of-sequence id first when
 * add_bos), as tokens: the template's pieces read with their {bos}/{eos}
 * markers, the system text as it is. *ids is malloc'd. */
int cli_template_encode_system(const sb_tokenizer *tok, const cli_template *t,
                               const char *system, bool add_bos, int32_t **ids, size_t *n_ids,
                               sb_error *err);

/* A user piece, ending with the assistant prefix, as tokens. open_user:
 * the state already ends with `stop` (the model wrote the user prefix but
 * for its trailing blanks), so only those blanks are repeated. */
int cli_template_encode_user(const sb_tokenizer *tok, const cli_template *t, const char *text,
                             bool open_user, int32_t **ids, size_t *n_ids, sb_error *err);

/* A whole conversation, as chat and serve read it: piece by piece, each
 * piece tokenized on its own ([bos] with the first; a system message as
 * the system piece, a user message as a user piece, an assistant message
 * as its text and the assistant suffix), then the assistant prefix if the
 * last message is not the user's. roles[i] is "system" (or "developer"),
 * "user" or "assistant". *ids is malloc'd. */
int cli_template_encode_messages(const sb_tokenizer *tok, const cli_template *t,
                                 const char *const *roles, const char *const *texts, size_t n,
                                 int32_t **ids, size_t *n_ids, sb_error *err);

#endif
