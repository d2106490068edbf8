/* template.c - see template.h. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

/* The text with which the model would start the next user turn. */
static void set_stop(cli_template *t)
{
	size_t up = strlen(t->user_prefix);
	while (up && (t->user_prefix[up - 1] == ' ' || t->user_prefix[up - 1] == '\t'))
		up--;
	snprintf(t->stop, sizeof t->stop, "%s%.*s", t->asst_suffix, (int)up, t->user_prefix);
	bool blank = true;
	for (const char *p = t->stop; *p; p++)
		if (*p != ' ' && *p != '\n' && *p != '\t')
			blank = false;
	/* A {token} is not text the model writes: its id ends the reply. */
	if (blank || !up || strchr(t->stop, '{'))
		t->stop[0] = 0;
}

void cli_template_init(cli_template *t, const sb_config *cfg)
{
	memset(t, 0, sizeof *t);
	t->name = cfg->has_chat_template ? "config.yaml" : "base model";
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
	set_stop(t);
}

/* True when the tokenizer reads "\n" as a piece it learned, rather than
 * as a byte (a SentencePiece byte-fallback piece) or as end of sequence. */
static bool has_newline_piece(const sb_tokenizer *tok)
{
	int32_t *ids = NULL;
	size_t n = 0;
	sb_error err = {0};
	bool yes = false;
	if (sb_tokenizer_encode(tok, "\n", 1, false, &ids, &n, &err) == 0 && n >= 1) {
		int32_t last = ids[n - 1];
		const char *piece = sb_tokenizer_piece(tok, last);
		yes = last != sb_tokenizer_eos(tok) && piece && strcmp(piece, "<0x0A>") != 0;
	}
	free(ids);
	return yes;
}

void cli_template_for_model(cli_template *t, const sb_config *cfg, const sb_tokenizer *tok)
{
	cli_template_init(t, cfg);
	if (cfg->has_chat_template)
		return;
	const char *nl = has_newline_piece(tok) ? "\n" : "{eos}";
	snprintf(t->sys_suffix, SB_CONFIG_STR, "%s", nl);
	snprintf(t->user_suffix, SB_CONFIG_STR, "%s", nl);
	snprintf(t->asst_suffix, SB_CONFIG_STR, "%s", nl);
	set_stop(t);
	snprintf(t->stops[t->n_stops++], SB_CONFIG_STR, "%s", "\n\n");
}

void cli_template_raw(cli_template *t)
{
	memset(t, 0, sizeof *t);
	t->name = "raw";
}

int cli_template_load(cli_template *t, const char *path, sb_error *err)
{
	static const char *const keys[] = {"system_prefix", "system_suffix", "user_prefix",
	                                   "user_suffix", "assistant_prefix", "assistant_suffix"};
	memset(t, 0, sizeof *t);
	char *fields[] = {t->sys_prefix, t->sys_suffix, t->user_prefix,
	                  t->user_suffix, t->asst_prefix, t->asst_suffix};
	json_error_t je;
	json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	int rc = 0;
	if (!o) {
		rc = sb_error_set(err, je.line < 1 ? SB_ERR_IO : SB_ERR_FORMAT,
		                  "%s: %s (line %d): expected a JSON object of template pieces", path,
		                  je.text, je.line);
		goto done;
	}
	if (!json_is_object(o)) {
		rc = sb_error_set(err, SB_ERR_FORMAT, "%s: expected a JSON object of template pieces", path);
		goto done;
	}
	const char *k;
	json_t *v;
	json_object_foreach(o, k, v) {
		size_t i = 0;
		while (i < 6 && strcmp(k, keys[i]))
			i++;
		if (i < 6) {
			if (!json_is_string(v) || json_string_length(v) >= SB_CONFIG_STR ||
			    strlen(json_string_value(v)) != json_string_length(v)) {
				rc = sb_error_set(err, SB_ERR_FORMAT, "%s: field '%s': expected a string of at most %d bytes",
				                  path, k, SB_CONFIG_STR - 1);
				goto done;
			}
			memcpy(fields[i], json_string_value(v), json_string_length(v) + 1);
		} else if (!strcmp(k, "stop")) {
			json_t *arr = json_is_string(v) ? json_pack("[O]", v) : json_incref(v);
			size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
			bool ok = json_is_array(arr) && n <= CLI_TEMPLATE_MAX_STOPS;
			for (size_t j = 0; ok && j < n; j++) {
				json_t *e = json_array_get(arr, j);
				ok = json_is_string(e) && json_string_length(e) > 0 &&
				     json_string_length(e) < SB_CONFIG_STR &&
				     strlen(json_string_value(e)) == json_string_length(e);
				if (ok)
					memcpy(t->stops[j], json_string_value(e), json_string_length(e) + 1);
			}
			json_decref(arr);
			if (!ok) {
				rc = sb_error_set(err, SB_ERR_FORMAT,
				                  "%s: field 'stop': expected a non-empty string or an array of up to %d",
				                  path, CLI_TEMPLATE_MAX_STOPS);
				goto done;
			}
			t->n_stops = n;
		} else {
			rc = sb_error_set(err, SB_ERR_FORMAT,
			                  "%s: unknown field '%s' (expected system_prefix, system_suffix, user_prefix, "
			                  "user_suffix, assistant_prefix, assistant_suffix or stop)", path, k);
			goto done;
		}
	}
	t->name = path;
	set_stop(t);
done:
	json_decref(o);
	return rc;
}

/* Appends ids to *v (growing it). */
static int push_ids(int32_t **v, size_t *n, size_t *cap, const int32_t *ids, size_t k)
{
	if (*n + k > *cap) {
		size_t nc = *cap ? *cap : 64;
		while (nc < *n + k)
			nc *= 2;
		int32_t *p = realloc(*v, nc * sizeof *p);
		if (!p)
			return -1;
		*v = p;
		*cap = nc;
	}
	memcpy(*v + *n, ids, k * sizeof *ids);
	*n += k;
	return 0;
}

int cli_template_encode(const sb_tokenizer *tok, const char *const *parts, const bool *literal,
                        size_t n, bool add_bos, int32_t **ids, size_t *n_ids, sb_error *err)
{
	int32_t *v = NULL;
	size_t nv = 0, cap = 0, seg_len = 0, seg_cap = 0;
	char *seg = NULL;
	int rc = 0;
	bool first = true;
	/* i == n flushes the last segment */
	for (size_t i = 0; i <= n && rc == 0; i++) {
		const char *p = i < n ? parts[i] : "";
		for (;;) {
			const char *mark = i < n && !literal[i] ? strchr(p, '{') : NULL;
			int32_t special = -1;
			size_t mlen = 0;
			while (mark) {
				if (!strncmp(mark, "{eos}", 5)) {
					special = sb_tokenizer_eos(tok);
					mlen = 5;
				} else if (!strncmp(mark, "{bos}", 5)) {
					special = sb_tokenizer_bos(tok);
					mlen = 5;
				}
				if (mlen)
					break;
				mark = strchr(mark + 1, '{');
			}
			size_t take = mark ? (size_t)(mark - p) : strlen(p);
			if (seg_len + take + 1 > seg_cap) {
				size_t nc = seg_cap ? seg_cap : 256;
				while (nc < seg_len + take + 1)
					nc *= 2;
				char *q = realloc(seg, nc);
				if (!q)
					goto nomem;
				seg = q;
				seg_cap = nc;
			}
			memcpy(seg + seg_len, p, take);
			seg_len += take;
			seg[seg_len] = 0;
			if (!mark && i < n)
				break;
			/* a marker or the end: the segment so far is one string */
			if (seg_len || (first && add_bos)) {
				int32_t *t = NULL;
				size_t k = 0;
				if ((rc = sb_tokenizer_encode(tok, seg ? seg : "", seg_len, first && add_bos, &t, &k, err)) < 0)
					break;
				int fail = push_ids(&v, &nv, &cap, t, k);
				free(t);
				if (fail)
					goto nomem;
				first = false;
			}
			seg_len = 0;
			if (!mark)
				break;
			if (special >= 0 && push_ids(&v, &nv, &cap, &special, 1) < 0)
				goto nomem;
			first = false;
			p = mark + mlen;
		}
	}
	free(seg);
	if (rc < 0) {
		free(v);
		return rc;
	}
	*ids = v;
	*n_ids = nv;
	return 0;
nomem:
	free(seg);
	free(v);
	return sb_error_set(err, SB_ERR_NOMEM, "out of memory");
}

int cli_template_encode_system(const sb_tokenizer *tok, const cli_template *t,
                               const char *system, bool add_bos, int32_t **ids, size_t *n_ids,
                               sb_error *err)
{
	const char *parts[] = {t->sys_prefix, system, t->sys_suffix};
	const bool literal[] = {false, true, false};
	return cli_template_encode(tok, parts, literal, 3, add_bos, ids, n_ids, err);
}

int cli_template_encode_user(const sb_tokenizer *tok, const cli_template *t, const char *text,
                             bool open_user, int32_t **ids, size_t *n_ids, sb_error *err)
{
	const char *up = t->user_prefix;
	if (open_user) {
		size_t n = strlen(up);
		while (n && (up[n - 1] == ' ' || up[n - 1] == '\t'))
			n--;
		up += n;
	}
	const char *parts[] = {up, text, t->user_suffix, t->asst_prefix};
	const bool literal[] = {false, true, false, false};
	return cli_template_encode(tok, parts, literal, 4, false, ids, n_ids, err);
}
int cli_template_encode_messages(const sb_tokenizer *tok, const cli_template *t,
                                 const char *const *roles, const char *const *texts, size_t n,
                                 int32_t **ids, size_t *n_ids, sb_error *err)
{
	int32_t *v = NULL;
	size_t nv = 0, cap = 0;
	int rc = 0;
	/* i == n: the assistant prefix, unless the last piece (a user's) ends with it */
	for (size_t i = 0; i <= n && rc == 0; i++) {
		int32_t *p = NULL;
		size_t k = 0;
		bool sys = i < n && (!strcmp(roles[i], "system") || !strcmp(roles[i], "developer"));
		bool user = i < n && !strcmp(roles[i], "user");
		if (i == n && n && !strcmp(roles[n - 1], "user"))
			break;
		if (i == 0 && !sys) {
			/* a conversation without a system message starts with bos alone */
			const char *none = "";
			const bool lit = false;
			if ((rc = cli_template_encode(tok, &none, &lit, 1, true, &p, &k, err)) < 0)
				break;
			int fail = push_ids(&v, &nv, &cap, p, k);
			free(p);
			if (fail)
				goto nomem;
			p = NULL;
			k = 0;
		}
		if (i == n) {
			const char *prefix = t->asst_prefix;
			const bool lit = false;
			rc = cli_template_encode(tok, &prefix, &lit, 1, false, &p, &k, err);
		} else if (sys) {
			rc = cli_template_encode_system(tok, t, texts[i], i == 0, &p, &k, err);
		} else if (user) {
			rc = cli_template_encode_user(tok, t, texts[i], false, &p, &k, err);
		} else {
			const char *parts[] = {texts[i], t->asst_suffix};
			const bool lit[] = {true, false};
			rc = cli_template_encode(tok, parts, lit, 2, false, &p, &k, err);
		}
		int fail = rc == 0 && push_ids(&v, &nv, &cap, p, k) < 0;
		free(p);
		if (fail)
			goto nomem;
	}
	if (rc < 0) {
		free(v);
		return rc;
	}
	*ids = v;
	*n_ids = nv;
	return 0;
nomem:
	free(v);
	return sb_error_set(err, SB_ERR_NOMEM, "out of memory");
}
