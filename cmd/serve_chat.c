/* serve_chat.c - a chat request's messages as tokens, laid out as `chat`
 * lays out a conversation (template.h): each piece tokenized on its own
 * and the pieces concatenated, never the whole text tokenized again. So
 * turn N+1's tokens begin with turn N's prompt; and a reply the client
 * sends back is read as the tokens that were sampled for it (the cache
 * remembers them with the state that followed), so they continue with
 * exactly turn N's prompt + completion, the sequence the cache holds. */
#include <stdlib.h>
#include <string.h>

#include "serve.h"

typedef struct tokbuf {
	int32_t *ids;
	size_t n, cap;
} tokbuf;

static int push_ids(tokbuf *b, const int32_t *ids, size_t n)
{
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->n + n)
			cap *= 2;
		int32_t *p = realloc(b->ids, cap * sizeof *p);
		if (!p)
			return -2;
		b->ids = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->ids + b->n, ids, n * sizeof *ids);
	b->n += n;
	return 0;
}

/* Appends the tokens of an encoding call (rc its status, err its error). */
static int push_encoded(tokbuf *b, int rc, int32_t *ids, size_t n, const sb_error *err,
                        char *why, size_t cap)
{
	if (rc < 0) {
		snprintf(why, cap, "%s", err->msg);
		return err->code == SB_ERR_NOMEM ? -2 : -1;
	}
	rc = push_ids(b, ids, n);
	free(ids);
	return rc;
}

/* Template text ({bos}/{eos} read as those ids), or a literal text. */
static int push_text(serve_server *s, tokbuf *b, const char *text, bool literal, bool bos,
                     char *why, size_t cap)
{
	int32_t *ids = NULL;
	size_t n = 0;
	sb_error err = {0};
	int rc = cli_template_encode(s->tok, &text, &literal, 1, bos, &ids, &n, &err);
	return push_encoded(b, rc, ids, n, &err, why, cap);
}

/* A message's content: a string, null, or an array of {"type": "text",
 * "text": ...} parts (joined). Malloc'd, or NULL with why set. */
static char *content_text(json_t *msg, size_t i, char *why, size_t cap, bool *nomem)
{
	json_t *c = json_object_get(msg, "content");
	if (!c || json_is_null(c))
		return strdup("");
	if (json_is_string(c))
		return strndup(json_string_value(c), json_string_length(c));
	if (!json_is_array(c)) {
		snprintf(why, cap, "messages[%zu].content: expected a string or an array of text parts", i);
		return NULL;
	}
	size_t total = 0, k;
	json_t *part;
	json_array_foreach(c, k, part) {
		json_t *type = json_object_get(part, "type"), *t = json_object_get(part, "text");
		if (!json_is_object(part) || !json_is_string(type) ||
		    strcmp(json_string_value(type), "text") || !json_is_string(t)) {
			snprintf(why, cap, "messages[%zu].content[%zu]: expected {\"type\": \"text\", \"text\": \"...\"} (only text is supported)", i, k);
			return NULL;
		}
		total += json_string_length(t);
	}
	char *out = malloc(total + 1);
	if (!out) {
		*nomem = true;
		return NULL;
	}
	size_t at = 0;
	json_array_foreach(c, k, part) {
		json_t *t = json_object_get(part, "text");
		memcpy(out + at, json_string_value(t), json_string_length(t));
		at += json_string_length(t);
	}
	out[at] = 0;
	return out;
}

int serve_chat_render(serve_server *s, json_t *messages, int32_t **tokens, size_t *n,
                      size_t *shared, char *why, size_t why_cap, const char **param)
{
	*param = "messages";
	*shared = 0;
	if (!json_is_array(messages) || json_array_size(messages) == 0) {
		snprintf(why, why_cap, "messages: expected a non-empty array of messages");
		return -1;
	}
	tokbuf b = {0};
	int rc = 0;
	bool open_user = false, first = true, nomem = false;
	char *text = NULL;
	size_t i;
	json_t *msg;
	size_t count = json_array_size(messages);
	json_array_foreach(messages, i, msg) {
		json_t *role = json_object_get(msg, "role");
		if (!json_is_object(msg) || !json_is_string(role)) {
			snprintf(why, why_cap, "messages[%zu]: expected an object with a string \"role\"", i);
			rc = -1;
			break;
		}
		const char *r = json_string_value(role);
		bool is_sys = !strcmp(r, "system") || !strcmp(r, "developer");
		bool is_user = !strcmp(r, "user"), is_asst = !strcmp(r, "assistant");
		if (!is_sys && !is_user && !is_asst) {
			snprintf(why, why_cap, "messages[%zu].role: expected system, developer, user or assistant, got '%.64s'", i, r);
			rc = -1;
			break;
		}
		if (i + 1 == count && !is_user) {
			snprintf(why, why_cap, "messages[%zu]: the last message must be the user's", i);
			rc = -1;
			break;
		}
		if (!(text = content_text(msg, i, why, why_cap, &nomem))) {
			rc = nomem ? -2 : -1;
			break;
		}
		if (first && !is_sys) {
			/* A conversation without a system prompt starts with bos
			 * alone, as chat starts it. */
			if ((rc = push_text(s, &b, "", false, true, why, why_cap)) < 0)
				break;
			first = false;
		}
		if (is_sys) {
			int32_t *ids = NULL;
			size_t ni = 0;
			sb_error err = {0};
			int erc = cli_template_encode_system(s->tok, &s->tpl, text, first, &ids, &ni, &err);
			rc = push_encoded(&b, erc, ids, ni, &err, why, why_cap);
			if (first)
				*shared = b.n;
			first = false;
			open_user = false;
		} else if (is_user) {
			int32_t *ids = NULL;
			size_t ni = 0;
			sb_error err = {0};
			int erc = cli_template_encode_user(s->tok, &s->tpl, text, open_user, &ids, &ni, &err);
			rc = push_encoded(&b, erc, ids, ni, &err, why, why_cap);
			open_user = false;
		} else {
			int32_t *ids = NULL;
			size_t nr = 0;
			bool open = false;
			if (serve_cache_reply_tokens(s->cache, b.ids, b.n, text, strlen(text), &ids,
			                             &nr, &open)) {
				rc = push_ids(&b, ids, nr);
				free(ids);
			} else {
				rc = push_text(s, &b, text, true, false, why, why_cap);
			}
			/* A reply that ended at the template's stop holds the next
			 * user prefix already; others get the assistant suffix. */
			open_user = open;
			if (rc == 0 && !open && s->tpl.asst_suffix[0])
				rc = push_text(s, &b, s->tpl.asst_suffix, false, false, why, why_cap);
		}
		free(text);
		text = NULL;
		if (rc < 0)
			break;
	}
	free(text);
	if (rc < 0) {
		free(b.ids);
		return rc;
	}
	*tokens = b.ids;
	*n = b.n;
	return 0;
}
