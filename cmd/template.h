/* template.h - a model's chat template (config.yaml's chat: mapping, or the
 * documented base-model default) and the text of each piece of a
 * conversation as `chat` and `serve` read it into the state.
 *
 * A conversation is read piece by piece, each piece tokenized on its own,
 * so a longer conversation's tokens always extend a shorter one's:
 *
 *     [bos] system_prefix SYSTEM system_suffix       (cli_template_system)
 *     user_prefix TEXT user_suffix assistant_prefix  (cli_template_user)
 *     REPLY                                          (the generated tokens)
 *     assistant_suffix                               (after each reply)
 *
 * A reply also ends where the model starts the next user turn by itself:
 * at assistant_suffix + user_prefix without its trailing blanks (`stop`). */
#ifndef SB_CLI_TEMPLATE_H
#define SB_CLI_TEMPLATE_H

#include <stdbool.h>

#include "seqboat.h"

typedef struct cli_template {
	char sys_prefix[SB_CONFIG_STR], sys_suffix[SB_CONFIG_STR];
	char user_prefix[SB_CONFIG_STR], user_suffix[SB_CONFIG_STR];
	char asst_prefix[SB_CONFIG_STR], asst_suffix[SB_CONFIG_STR];
	char stop[2 * SB_CONFIG_STR]; /* "" if none (blank or no user prefix) */
} cli_template;

/* The model's template, or the base-model default ("User: ", "Assistant:",
 * newlines) when config.yaml has no chat: mapping. */
void cli_template_init(cli_template *t, const sb_config *cfg);

/* The text of the system piece (malloc'd, caller frees; NULL when out of
 * memory). */
char *cli_template_system(const cli_template *t, const char *system);

/* The text of a user piece, ending with the assistant prefix (malloc'd,
 * caller frees; NULL when out of memory). open_user: the state already
 * ends with `stop` (the model wrote the user prefix but for its trailing
 * blanks), so only those blanks are repeated. */
char *cli_template_user(const cli_template *t, const char *text, bool open_user);

#endif
