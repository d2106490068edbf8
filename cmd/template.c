/* template.c - see template.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

void cli_template_init(cli_template *t, const sb_config *cfg)
{
	if (cfg->has_chat_template) {
		memcpy(t->sys_prefix, cfg->chat_system_prefix, SB_CONFIG_STR);
		memcpy(t->sys_suffix, cfg->chat_system_suffix, SB_CONFIG_STR);
		memcpy(t->user_prefix, cfg->chat_user_prefix, SB_CONFIG_STR);
		memcpy(t->user_suffix, cfg->chat_user_suffix, SB_CONFIG_STR);
		memcpy(t->asst_prefix, cfg->chat_assistant_prefix, SB_CONFIG_STR);
		memcpy(t->asst_suffix, cfg->chat_assistant_suffix, SB_CONFIG_STR);
	} else {
		snprintf(t->sys_prefix, SB_CONFIG_STR, "%s", "");
		snprintf(t->sys_suffix, SB_CONFIG_STR, "%s", "\n");
		snprintf(t->user_prefix, SB_CONFIG_STR, "%s", "User: ");
		snprintf(t->user_suffix, SB_CONFIG_STR, "%s", "\n");
		snprintf(t->asst_prefix, SB_CONFIG_STR, "%s", "Assistant:");
		snprintf(t->asst_suffix, SB_CONFIG_STR, "%s", "\n");
	}
	/* The text with which the model would start the next user turn. */
	size_t up = strlen(t->user_prefix);
	while (up && (t->user_prefix[up - 1] == ' ' || t->user_prefix[up - 1] == '\t'))
		up--;
	snprintf(t->stop, sizeof t->stop, "%s%.*s", t->asst_suffix, (int)up, t->user_prefix);
	bool blank = true;
	for (const char *p = t->stop; *p; p++)
		if (*p != ' ' && *p != '\n' && *p != '\t')
			blank = false;
	if (blank || !up)
		t->stop[0] = 0;
}

static char *concat(const char *a, const char *b, const char *c, const char *d)
{
	size_t la = strlen(a), lb = strlen(b), lc = strlen(c), ld = strlen(d);
	char *s = malloc(la + lb + lc + ld + 1);
	if (!s)
		return NULL;
	memcpy(s, a, la);
	memcpy(s + la, b, lb);
	memcpy(s + la + lb, c, lc);
	memcpy(s + la + lb + lc, d, ld);
	s[la + lb + lc + ld] = 0;
	return s;
}

char *cli_template_system(const cli_template *t, const char *system)
{
	return concat(t->sys_prefix, system, t->sys_suffix, "");
}

char *cli_template_user(const cli_template *t, const char *text, bool open_user)
{
	const char *up = t->user_prefix;
	if (open_user) {
		size_t n = strlen(up);
		while (n && (up[n - 1] == ' ' || up[n - 1] == '\t'))
			n--;
		up += n;
	}
	return concat(up, text, t->user_suffix, t->asst_prefix);
}
