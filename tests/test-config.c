/* test-config.c - the config.yaml reader (every refusal names its key) and
 * the writer, checked against the documented example. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define LABEL "config.yaml"

/* A valid config to break one rule at a time. */
static const char base[] =
	"format: 1\n"
	"architecture:\n"
	"  vocab_size: 72\n"
	"  embed_dim: 64\n"
	"  z_dim: 32\n"
	"  hidden_dim: 128\n"
	"  n_dim: 8\n"
	"  layers: 2\n"
	"  window: 16\n"
	"  ffn_dim: 0\n"
	"  max_positions: 1024\n"
	"  truncation_length: 2048\n"
	"  rel_pos_bias: rotary\n"
	"  attention: softmax\n"
	"  norm: layernorm\n"
	"  activation: silu\n"
	"  normalize_before: true\n"
	"  affine_final_norm: true\n"
	"  scale_embedding: true\n"
	"  tied_embeddings: true\n"
	"tokenizer:\n"
	"  type: fairseq\n"
	"  file: dict.txt\n"
	"  bos_id: 2\n"
	"  eos_id: 2\n"
	"  pad_id: 1\n"
	"  unk_id: 3\n";

/* base with the first `from` replaced by `to` (malloc'd). */
static char *subst(const char *s, const char *from, const char *to)
{
	const char *at = strstr(s, from);
	ck_assert_msg(at != NULL, "'%s' not in the base document", from);
	size_t a = (size_t)(at - s), f = strlen(from), t = strlen(to);
	char *out = malloc(strlen(s) - f + t + 1);
	memcpy(out, s, a);
	memcpy(out + a, to, t);
	strcpy(out + a + t, at + f);
	return out;
}

static void refused_doc(const char *doc, size_t len, int code, const char *want)
{
	sb_config cfg;
	sb_error err = {0};
	int rc = sb_config_parse(doc, len, LABEL, &cfg, &err);
	ck_assert_msg(rc == code, "rc %d (want %d) for:\n%s\nmessage: %s", rc, code,
	              doc, err.msg);
	ck_assert_int_eq(err.code, code);
	ck_assert_msg(strncmp(err.msg, LABEL ": ", strlen(LABEL) + 2) == 0,
	              "message does not name the file: %s", err.msg);
	ck_assert_msg(strstr(err.msg, want) != NULL, "'%s' lacks '%s'", err.msg, want);
}

/* base with one substitution must be refused with code and message. */
static void refused(const char *from, const char *to, int code, const char *want)
{
	char *doc = subst(base, from, to);
	refused_doc(doc, strlen(doc), code, want);
	free(doc);
}

static void parse_ok(const char *doc, sb_config *cfg)
{
	sb_error err = {0};
	int rc = sb_config_parse(doc, strlen(doc), LABEL, cfg, &err);
	ck_assert_msg(rc == SB_OK, "refused (%s):\n%s", err.msg, doc);
}

static void assert_config_eq(const sb_config *a, const sb_config *b)
{
	ck_assert_int_eq(a->vocab_size, b->vocab_size);
	ck_assert_int_eq(a->embed_dim, b->embed_dim);
	ck_assert_int_eq(a->z_dim, b->z_dim);
	ck_assert_int_eq(a->hidden_dim, b->hidden_dim);
	ck_assert_int_eq(a->n_dim, b->n_dim);
	ck_assert_int_eq(a->layers, b->layers);
	ck_assert_int_eq(a->window, b->window);
	ck_assert_int_eq(a->ffn_dim, b->ffn_dim);
	ck_assert_int_eq(a->max_positions, b->max_positions);
	ck_assert_int_eq(a->truncation_length, b->truncation_length);
	ck_assert_int_eq(a->rel_pos, b->rel_pos);
	ck_assert_int_eq(a->attention, b->attention);
	ck_assert_int_eq(a->norm, b->norm);
	ck_assert_int_eq(a->activation, b->activation);
	ck_assert_int_eq(a->normalize_before, b->normalize_before);
	ck_assert_int_eq(a->affine_final_norm, b->affine_final_norm);
	ck_assert_int_eq(a->scale_embedding, b->scale_embedding);
	ck_assert_int_eq(a->tied_embeddings, b->tied_embeddings);
	ck_assert_int_eq(a->tokenizer, b->tokenizer);
	ck_assert_str_eq(a->tokenizer_file, b->tokenizer_file);
	ck_assert_int_eq(a->byte_symbols, b->byte_symbols);
	ck_assert_int_eq(a->bos_id, b->bos_id);
	ck_assert_int_eq(a->eos_id, b->eos_id);
	ck_assert_int_eq(a->pad_id, b->pad_id);
	ck_assert_int_eq(a->unk_id, b->unk_id);
	ck_assert_str_eq(a->chat_system_prefix, b->chat_system_prefix);
	ck_assert_str_eq(a->chat_system_suffix, b->chat_system_suffix);
	ck_assert_str_eq(a->chat_user_prefix, b->chat_user_prefix);
	ck_assert_str_eq(a->chat_user_suffix, b->chat_user_suffix);
	ck_assert_str_eq(a->chat_assistant_prefix, b->chat_assistant_prefix);
	ck_assert_str_eq(a->chat_assistant_suffix, b->chat_assistant_suffix);
	ck_assert_int_eq(a->has_chat_template, b->has_chat_template);
	ck_assert_str_eq(a->name, b->name);
	ck_assert_str_eq(a->source, b->source);
	ck_assert_str_eq(a->license, b->license);
}

/* The ```yaml block of docs/model-format.md (malloc'd). */
static char *documented_example(void)
{
	FILE *f = fopen(tu_src("docs/model-format.md"), "rb");
	ck_assert_msg(f != NULL, "cannot open docs/model-format.md");
	static char text[65536];
	size_t n = fread(text, 1, sizeof text - 1, f);
	fclose(f);
	text[n] = 0;
	const char *start = strstr(text, "```yaml\n");
	ck_assert_ptr_nonnull(start);
	start += strlen("```yaml\n");
	const char *end = strstr(start, "```");
	ck_assert_ptr_nonnull(end);
	return strndup(start, (size_t)(end - start));
}

START_TEST(config_parses_documented_example)
{
	char *doc = documented_example();
	sb_config got;
	parse_ok(doc, &got);
	free(doc);

	sb_config want;
	memset(&want, 0, sizeof want);
	want.vocab_size = 72;
	want.embed_dim = 64;
	want.z_dim = 32;
	want.hidden_dim = 128;
	want.n_dim = 8;
	want.layers = 2;
	want.window = 16;
	want.ffn_dim = 0;
	want.max_positions = 1024;
	want.truncation_length = 2048;
	want.rel_pos = SB_POS_ROTARY;
	want.attention = SB_ATTN_SOFTMAX;
	want.norm = SB_NORM_LAYERNORM;
	want.activation = SB_ACT_SILU;
	want.normalize_before = true;
	want.affine_final_norm = true;
	want.scale_embedding = true;
	want.tied_embeddings = true;
	want.tokenizer = SB_TOK_FAIRSEQ;
	strcpy(want.tokenizer_file, "dict.txt");
	want.byte_symbols = SB_BYTES_AUTO;
	want.bos_id = 2;
	want.eos_id = 2;
	want.pad_id = 1;
	want.unk_id = 3;
	want.has_chat_template = true;   /* the example has a chat mapping */
	strcpy(want.name, "rotary-softmax");
	strcpy(want.source, "converted from checkpoint.pt by tools/convert_fairseq.py");
	strcpy(want.license, "MIT");
	assert_config_eq(&got, &want);
}
END_TEST

START_TEST(config_defaults_and_variants)
{
	sb_config c;
	parse_ok(base, &c);
	ck_assert(!c.has_chat_template);
	ck_assert_int_eq(c.byte_symbols, SB_BYTES_AUTO);
	ck_assert_str_eq(c.name, "");
	ck_assert_str_eq(c.license, "");
	ck_assert_str_eq(c.chat_user_prefix, "");

	char *doc = subst(base, "  type: fairseq\n", "  type: \"fairseq\"\n  byte_symbols: false\n");
	parse_ok(doc, &c);
	ck_assert_int_eq(c.byte_symbols, SB_BYTES_OFF);
	free(doc);
	doc = subst(base, "  file: dict.txt\n", "  file: 'dict.txt'\n  byte_symbols: true\n");
	parse_ok(doc, &c);
	ck_assert_int_eq(c.byte_symbols, SB_BYTES_ON);
	free(doc);

	doc = subst(base, "  norm: layernorm\n  activation: silu\n",
	            "  norm: rmsnorm\n  activation: gelu\n");
	char *doc2 = subst(doc, "rel_pos_bias: rotary\n  attention: softmax",
	                   "rel_pos_bias: simple\n  attention: relu2");
	parse_ok(doc2, &c);
	ck_assert_int_eq(c.norm, SB_NORM_RMSNORM);
	ck_assert_int_eq(c.activation, SB_ACT_GELU);
	ck_assert_int_eq(c.rel_pos, SB_POS_SIMPLE);
	ck_assert_int_eq(c.attention, SB_ATTN_RELU2);
	free(doc);
	free(doc2);

	/* Flow style and keys in any order. */
	parse_ok("{tokenizer: {unk_id: -1, pad_id: -1, eos_id: 0, bos_id: -1,"
	         " file: spm.model, type: sentencepiece},"
	         " architecture: {tied_embeddings: false, scale_embedding: false,"
	         " affine_final_norm: false, normalize_before: false,"
	         " activation: relu, norm: scalenorm, attention: laplace,"
	         " rel_pos_bias: simple, truncation_length: 0, max_positions: 1,"
	         " ffn_dim: 1048576, window: 1, layers: 1, n_dim: 1, hidden_dim: 1,"
	         " z_dim: 2, embed_dim: 1, vocab_size: 2147483647},"
	         " chat: {user_prefix: \"<u>\"}, format: 1}", &c);
	ck_assert_int_eq(c.tokenizer, SB_TOK_SENTENCEPIECE);
	ck_assert_str_eq(c.tokenizer_file, "spm.model");
	ck_assert_int_eq(c.vocab_size, 2147483647);
	ck_assert_int_eq(c.ffn_dim, 1048576);
	ck_assert_int_eq(c.bos_id, -1);
	ck_assert_int_eq(c.eos_id, 0);
	ck_assert_int_eq(c.norm, SB_NORM_SCALENORM);
	ck_assert_int_eq(c.attention, SB_ATTN_LAPLACE);
	ck_assert_int_eq(c.activation, SB_ACT_RELU);
	ck_assert(!c.normalize_before && !c.tied_embeddings);
	ck_assert(c.has_chat_template);
	ck_assert_str_eq(c.chat_user_prefix, "<u>");
	ck_assert_str_eq(c.chat_assistant_prefix, "");
}
END_TEST

START_TEST(config_rejects_unknown_key)
{
	refused("  window: 16\n", "  window: 16\n  colour: red\n", SB_ERR_FORMAT,
	        "config.yaml: architecture.colour: unknown key");
	refused("format: 1\n", "format: 1\nextra: 1\n", SB_ERR_FORMAT,
	        "config.yaml: extra: unknown key");
	refused("tokenizer:\n", "chat:\n  user_prefx: x\ntokenizer:\n", SB_ERR_FORMAT,
	        "chat.user_prefx: unknown key");
}
END_TEST

START_TEST(config_rejects_missing_key)
{
	refused("  window: 16\n", "", SB_ERR_FORMAT,
	        "config.yaml: architecture.window: missing (required)");
	refused("  unk_id: 3\n", "", SB_ERR_FORMAT, "tokenizer.unk_id: missing");
	refused("format: 1\n", "", SB_ERR_FORMAT, "config.yaml: format: missing");
	char *doc = strndup(base, (size_t)(strstr(base, "tokenizer:") - base));
	refused_doc(doc, strlen(doc), SB_ERR_FORMAT, "config.yaml: tokenizer: missing");
	free(doc);
}
END_TEST

START_TEST(config_rejects_duplicate_key)
{
	refused("  window: 16\n", "  window: 16\n  window: 8\n", SB_ERR_FORMAT,
	        "config.yaml: architecture.window: duplicate key");
	refused("format: 1\n", "format: 1\nformat: 1\n", SB_ERR_FORMAT,
	        "config.yaml: format: duplicate key");
	refused("tokenizer:\n", "chat: {}\nchat: {}\ntokenizer:\n", SB_ERR_FORMAT,
	        "chat: duplicate key");
}
END_TEST

START_TEST(config_rejects_wrong_types)
{
	refused("window: 16", "window: abc", SB_ERR_FORMAT,
	        "config.yaml: architecture.window: expected an integer from 1 to 1048576, got 'abc'");
	/* Integers are plain: quoted, float, hex, octal-looking are refused. */
	refused("window: 16", "window: \"16\"", SB_ERR_FORMAT,
	        "architecture.window: expected an integer from 1 to 1048576, got quoted '16'");
	refused("window: 16", "window: 16.0", SB_ERR_FORMAT, "got '16.0'");
	refused("window: 16", "window: 0x10", SB_ERR_FORMAT, "got '0x10'");
	refused("window: 16", "window: 016", SB_ERR_FORMAT, "got '016'");
	refused("window: 16", "window: {a: 1}", SB_ERR_FORMAT,
	        "architecture.window: expected an integer from 1 to 1048576, got a mapping");
	refused("normalize_before: true", "normalize_before: yes", SB_ERR_FORMAT,
	        "architecture.normalize_before: expected true or false, got 'yes'");
	refused("normalize_before: true", "normalize_before: 'true'", SB_ERR_FORMAT,
	        "got quoted 'true'");
	refused("architecture:\n", "architecture: 5\nx:\n", SB_ERR_FORMAT,
	        "config.yaml: architecture: expected a mapping, got a scalar");
	/* Plain values other YAML readers take for null, booleans or numbers
	 * are not strings. */
	refused("format: 1\n", "format: 1\nprovenance: {name: null}\n", SB_ERR_FORMAT,
	        "provenance.name: expected a string, got 'null'");
	refused("format: 1\n", "format: 1\nprovenance: {license: 2.5}\n", SB_ERR_FORMAT,
	        "provenance.license: expected a string, got '2.5'");
	refused("format: 1\n", "format: 1\nchat:\n  user_prefix:\n", SB_ERR_FORMAT,
	        "chat.user_prefix: expected a string, got an empty value");
	refused("format: 1\n", "format: 2\n", SB_ERR_FORMAT,
	        "config.yaml: format: expected 1, got '2'");
}
END_TEST

START_TEST(config_rejects_out_of_range)
{
	refused("window: 16", "window: 0", SB_ERR_FORMAT,
	        "architecture.window: expected an integer from 1 to 1048576, got '0'");
	refused("embed_dim: 64", "embed_dim: 1048577", SB_ERR_FORMAT,
	        "architecture.embed_dim: expected an integer from 1 to 1048576, got '1048577'");
	refused("vocab_size: 72", "vocab_size: 2147483648", SB_ERR_FORMAT,
	        "architecture.vocab_size: expected an integer >= 1, got '2147483648'");
	refused("vocab_size: 72", "vocab_size: 99999999999999999999999", SB_ERR_FORMAT,
	        "architecture.vocab_size: expected an integer >= 1");
	refused("ffn_dim: 0", "ffn_dim: -1", SB_ERR_FORMAT,
	        "architecture.ffn_dim: expected an integer from 0 to 1048576, got '-1'");
}
END_TEST

START_TEST(config_rejects_odd_z_dim)
{
	refused("z_dim: 32", "z_dim: 33", SB_ERR_FORMAT,
	        "architecture.z_dim: expected an integer from 1 to 1048576, even, got '33'");
}
END_TEST

START_TEST(config_rejects_token_id_out_of_range)
{
	refused("bos_id: 2", "bos_id: 72", SB_ERR_FORMAT,
	        "config.yaml: tokenizer.bos_id: expected an integer from -1 to 71 (vocab_size - 1), got '72'");
	refused("unk_id: 3", "unk_id: -2", SB_ERR_FORMAT,
	        "tokenizer.unk_id: expected an integer >= -1, got '-2'");
	/* The check holds whichever section comes first. */
	char *doc = subst(base, "  vocab_size: 72\n", "  vocab_size: 3\n");
	refused_doc(doc, strlen(doc), SB_ERR_FORMAT, "tokenizer.unk_id: expected an integer from -1 to 2");
	free(doc);
}
END_TEST

START_TEST(config_rejects_anchor_and_alias)
{
	refused("window: 16", "window: &w 16", SB_ERR_FORMAT,
	        "config.yaml: architecture.window: anchors are not allowed (&w");
	refused("window: 16", "window: *w", SB_ERR_FORMAT,
	        "config.yaml: architecture.window: aliases are not allowed (*w");
	refused("architecture:\n", "architecture: &a\n", SB_ERR_FORMAT,
	        "anchors are not allowed");
	refused("window: 16", "window: !!int 16", SB_ERR_FORMAT,
	        "architecture.window: tags are not allowed");
}
END_TEST

START_TEST(config_rejects_two_documents)
{
	size_t n = strlen(base);
	char *doc = malloc(2 * n + 16);
	sprintf(doc, "%s---\n%s", base, base);
	refused_doc(doc, strlen(doc), SB_ERR_FORMAT, "config.yaml: more than one document");
	free(doc);
}
END_TEST

START_TEST(config_rejects_deep_nesting)
{
	refused("window: 16", "window: [[[[[[[[16]]]]]]]]", SB_ERR_FORMAT,
	        "architecture.window: expected an integer from 1 to 1048576, got a sequence");
	refused("format: 1\n", "format: 1\nchat: {user_prefix: {a: {b: c}}}\n",
	        SB_ERR_FORMAT, "chat.user_prefix: expected a string, got a mapping");
	refused("format: 1\n", "format: 1\nprovenance: [name]\n", SB_ERR_FORMAT,
	        "provenance: expected a mapping, got a sequence");
	refused("format: 1\n", "format: 1\n? [a, b]\n: 1\n", SB_ERR_FORMAT,
	        "config.yaml: top level: expected a key, got a sequence");
}
END_TEST

START_TEST(config_rejects_huge_scalar)
{
	char big[2100];
	char *doc;
	memset(big, 'x', sizeof big);
	memcpy(big, "  file: \"", 9);
	memcpy(big + 9 + 2000, "\"\n", 3);
	doc = subst(base, "  file: dict.txt\n", big);
	refused_doc(doc, strlen(doc), SB_ERR_FORMAT,
	            "tokenizer.file: expected a string of at most 1023 bytes, got 2000 bytes");
	free(doc);

	/* 1023 bytes are fine, 1024 are not. */
	char line[1200];
	char s1023[1024];
	memset(s1023, 'a', 1023);
	s1023[1023] = 0;
	snprintf(line, sizeof line, "format: 1\nprovenance: {name: %s}\n", s1023);
	doc = subst(base, "format: 1\n", line);
	sb_config c;
	parse_ok(doc, &c);
	ck_assert_str_eq(c.name, s1023);
	free(doc);
	snprintf(line, sizeof line, "format: 1\nprovenance: {name: %sa}\n", s1023);
	doc = subst(base, "format: 1\n", line);
	refused_doc(doc, strlen(doc), SB_ERR_FORMAT, "provenance.name: expected a string of at most 1023 bytes, got 1024 bytes");
	free(doc);
}
END_TEST

START_TEST(config_rejects_bad_enum_value)
{
	refused("attention: softmax", "attention: sigmoid", SB_ERR_FORMAT,
	        "config.yaml: architecture.attention: expected one of softmax, relu2, laplace, got 'sigmoid'");
	refused("rel_pos_bias: rotary", "rel_pos_bias: Rotary", SB_ERR_FORMAT,
	        "architecture.rel_pos_bias: expected one of rotary, simple, got 'Rotary'");
	refused("type: fairseq", "type: bpe", SB_ERR_FORMAT,
	        "tokenizer.type: expected one of sentencepiece, fairseq, got 'bpe'");
	refused("  type: fairseq\n", "  type: fairseq\n  byte_symbols: maybe\n", SB_ERR_FORMAT,
	        "tokenizer.byte_symbols: expected auto, true or false, got 'maybe'");
	refused("  type: fairseq\n", "  type: sentencepiece\n  byte_symbols: auto\n",
	        SB_ERR_FORMAT, "tokenizer.byte_symbols: only valid with type fairseq");
}
END_TEST

START_TEST(config_rejects_unsupported_official_options)
{
	static const char *const keys[] = {
		"local_pos", "adaptive_input", "adaptive_softmax_cutoff",
		"normalize_embedding",
	};
	for (size_t i = 0; i < 4; i++) {
		char line[128], want[160];
		snprintf(line, sizeof line, "  window: 16\n  %s: false\n", keys[i]);
		snprintf(want, sizeof want,
		         "config.yaml: architecture.%s: seqboat does not support the official option %s",
		         keys[i], keys[i]);
		refused("  window: 16\n", line, SB_ERR_UNSUPPORTED, want);
	}
	refused("norm: layernorm", "norm: batchnorm", SB_ERR_UNSUPPORTED,
	        "config.yaml: architecture.norm: seqboat does not support the official option batchnorm");
	refused("norm: layernorm", "norm: syncbatchnorm", SB_ERR_UNSUPPORTED,
	        "architecture.norm: seqboat does not support the official option syncbatchnorm");
}
END_TEST

START_TEST(config_rejects_invalid_utf8_and_nul)
{
	refused("format: 1\n", "format: 1\nprovenance: {name: \"ab\xff\"}\n",
	        SB_ERR_FORMAT, "config.yaml: line 2, column 23: not valid UTF-8");
	/* An overlong encoding of '/' */
	refused("format: 1\n", "format: 1\nprovenance: {name: \"\xc0\xaf\"}\n",
	        SB_ERR_FORMAT, "not valid UTF-8");
	/* A NUL by escape would cut the C string short. */
	refused("format: 1\n", "format: 1\nprovenance: {name: \"a\\0b\"}\n",
	        SB_ERR_FORMAT, "provenance.name: a NUL character is not allowed");
	/* A raw NUL byte in the input. */
	static const char raw[] = "format: 1\0\n";
	refused_doc(raw, sizeof raw - 1, SB_ERR_FORMAT, "config.yaml: ");
}
END_TEST

START_TEST(config_rejects_bad_tokenizer_file)
{
	refused("file: dict.txt", "file: ../dict.txt", SB_ERR_FORMAT,
	        "tokenizer.file: expected a file name in the model directory (not empty, no '/' or '..'), got '../dict.txt'");
	refused("file: dict.txt", "file: sub/dict.txt", SB_ERR_FORMAT,
	        "tokenizer.file: expected a file name in the model directory");
	refused("file: dict.txt", "file: \"\"", SB_ERR_FORMAT,
	        "tokenizer.file: expected a file name in the model directory");
	refused("file: dict.txt", "file: ..", SB_ERR_FORMAT,
	        "tokenizer.file: expected a file name in the model directory");
}
END_TEST

START_TEST(config_rejects_bad_documents)
{
	refused_doc("", 0, SB_ERR_FORMAT, "config.yaml: the document is empty");
	refused_doc("- a\n- b\n", 8, SB_ERR_FORMAT,
	            "config.yaml: expected a mapping at the top level, got a sequence");
	refused_doc("just text\n", 10, SB_ERR_FORMAT,
	            "expected a mapping at the top level, got a scalar");
	refused("  window: 16\n", "  window: 16: 3\n", SB_ERR_FORMAT, "config.yaml: line 9, column ");
	refused("  window: 16\n", "\twindow: 16\n", SB_ERR_FORMAT, "config.yaml: line ");
}
END_TEST

START_TEST(config_load_reads_a_file)
{
	const char *dir = tu_tmpdir();
	const char *path = tu_write_file(dir, "config.yaml", base, strlen(base));
	char p[4200];
	snprintf(p, sizeof p, "%s", path);
	sb_config c;
	sb_error err = {0};
	ck_assert_int_eq(sb_config_load(p, &c, &err), SB_OK);
	ck_assert_int_eq(c.window, 16);

	char *bad = subst(base, "window: 16", "window: 0");
	path = tu_write_file(dir, "bad.yaml", bad, strlen(bad));
	free(bad);
	ck_assert_int_eq(sb_config_load(path, &c, &err), SB_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, "bad.yaml: architecture.window: expected"));

	snprintf(p, sizeof p, "%s/absent.yaml", dir);
	ck_assert_int_eq(sb_config_load(p, &c, &err), SB_ERR_IO);
	ck_assert_ptr_nonnull(strstr(err.msg, "absent.yaml: cannot open"));
}
END_TEST

START_TEST(config_to_yaml_round_trip)
{
	char *doc = documented_example();
	sb_config a, b;
	parse_ok(doc, &a);
	free(doc);
	sb_error err = {0};
	char *y = sb_config_to_yaml(&a, &err);
	ck_assert_msg(y != NULL, "%s", err.msg);
	parse_ok(y, &b);
	assert_config_eq(&a, &b);
	free(y);

	/* Strings YAML would otherwise bend: line breaks, quotes, escapes,
	 * words it reads as null/bool/number, Unicode line separators, C1
	 * controls, leading and trailing blanks. */
	memset(&a, 0, sizeof a);
	a.vocab_size = 32000;
	a.embed_dim = 512;
	a.z_dim = 128;
	a.hidden_dim = 1024;
	a.n_dim = 16;
	a.layers = 6;
	a.window = 64;
	a.ffn_dim = 2048;
	a.max_positions = 2048;
	a.truncation_length = 0;
	a.rel_pos = SB_POS_SIMPLE;
	a.attention = SB_ATTN_LAPLACE;
	a.norm = SB_NORM_SCALENORM;
	a.activation = SB_ACT_GELU;
	a.normalize_before = false;
	a.affine_final_norm = true;
	a.scale_embedding = false;
	a.tied_embeddings = true;
	a.tokenizer = SB_TOK_SENTENCEPIECE;
	strcpy(a.tokenizer_file, "tokenizer.model");
	a.byte_symbols = SB_BYTES_AUTO;
	a.bos_id = 1;
	a.eos_id = 2;
	a.pad_id = -1;
	a.unk_id = 0;
	a.has_chat_template = true;
	strcpy(a.chat_system_prefix, "<|system|>\n");
	strcpy(a.chat_system_suffix, "\n\n");
	strcpy(a.chat_user_prefix, "  User: \"quoted\" \\back\\slash\t# not a comment: ");
	strcpy(a.chat_user_suffix, "\r\n\x01\x7f end ");
	strcpy(a.chat_assistant_prefix, "null");
	strcpy(a.chat_assistant_suffix, "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \xc2\x85 \xe2\x80\xa8 \xef\xbb\xbf!");
	strcpy(a.name, "true");
	strcpy(a.source, "123");
	memset(a.license, 'L', SB_CONFIG_STR - 1);
	a.license[SB_CONFIG_STR - 1] = 0;
	y = sb_config_to_yaml(&a, &err);
	ck_assert_msg(y != NULL, "%s", err.msg);
	parse_ok(y, &b);
	assert_config_eq(&a, &b);
	free(y);

	/* fairseq writes its byte_symbols; no chat template writes no chat. */
	a.tokenizer = SB_TOK_FAIRSEQ;
	a.byte_symbols = SB_BYTES_ON;
	a.has_chat_template = false;
	a.chat_system_prefix[0] = a.chat_system_suffix[0] = a.chat_user_prefix[0] = 0;
	a.chat_user_suffix[0] = a.chat_assistant_prefix[0] = a.chat_assistant_suffix[0] = 0;
	y = sb_config_to_yaml(&a, &err);
	ck_assert_msg(y != NULL, "%s", err.msg);
	ck_assert_ptr_null(strstr(y, "chat:"));
	parse_ok(y, &b);
	assert_config_eq(&a, &b);
	free(y);
}
END_TEST

START_TEST(config_to_yaml_refuses_invalid_config)
{
	char *doc = documented_example();
	sb_config a;
	parse_ok(doc, &a);
	free(doc);
	sb_error err = {0};

	a.z_dim = 33;
	ck_assert_ptr_null(sb_config_to_yaml(&a, &err));
	ck_assert_int_eq(err.code, SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "architecture.z_dim"));
	a.z_dim = 32;

	a.has_chat_template = false;
	strcpy(a.chat_user_prefix, "x");
	ck_assert_ptr_null(sb_config_to_yaml(&a, &err));
	ck_assert_int_eq(err.code, SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "chat.user_prefix is set but has_chat_template is false"));
	a.has_chat_template = true;

	strcpy(a.name, "\xff");
	ck_assert_ptr_null(sb_config_to_yaml(&a, &err));
	ck_assert_int_eq(err.code, SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "provenance.name"));
}
END_TEST

START_TEST(config_enum_names)
{
	ck_assert_str_eq(sb_pos_name(SB_POS_ROTARY), "rotary");
	ck_assert_str_eq(sb_pos_name(SB_POS_SIMPLE), "simple");
	ck_assert_str_eq(sb_attn_name(SB_ATTN_SOFTMAX), "softmax");
	ck_assert_str_eq(sb_attn_name(SB_ATTN_RELU2), "relu2");
	ck_assert_str_eq(sb_attn_name(SB_ATTN_LAPLACE), "laplace");
	ck_assert_str_eq(sb_norm_name(SB_NORM_LAYERNORM), "layernorm");
	ck_assert_str_eq(sb_norm_name(SB_NORM_SCALENORM), "scalenorm");
	ck_assert_str_eq(sb_norm_name(SB_NORM_RMSNORM), "rmsnorm");
	ck_assert_str_eq(sb_act_name(SB_ACT_SILU), "silu");
	ck_assert_str_eq(sb_act_name(SB_ACT_GELU), "gelu");
	ck_assert_str_eq(sb_act_name(SB_ACT_RELU), "relu");
	ck_assert_str_eq(sb_act_name((sb_act_kind)42), "?");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("config");
	tcase_add_test(tc, config_parses_documented_example);
	tcase_add_test(tc, config_defaults_and_variants);
	tcase_add_test(tc, config_rejects_unknown_key);
	tcase_add_test(tc, config_rejects_missing_key);
	tcase_add_test(tc, config_rejects_duplicate_key);
	tcase_add_test(tc, config_rejects_wrong_types);
	tcase_add_test(tc, config_rejects_out_of_range);
	tcase_add_test(tc, config_rejects_odd_z_dim);
	tcase_add_test(tc, config_rejects_token_id_out_of_range);
	tcase_add_test(tc, config_rejects_anchor_and_alias);
	tcase_add_test(tc, config_rejects_two_documents);
	tcase_add_test(tc, config_rejects_deep_nesting);
	tcase_add_test(tc, config_rejects_huge_scalar);
	tcase_add_test(tc, config_rejects_bad_enum_value);
	tcase_add_test(tc, config_rejects_unsupported_official_options);
	tcase_add_test(tc, config_rejects_invalid_utf8_and_nul);
	tcase_add_test(tc, config_rejects_bad_tokenizer_file);
	tcase_add_test(tc, config_rejects_bad_documents);
	tcase_add_test(tc, config_load_reads_a_file);
	tcase_add_test(tc, config_to_yaml_round_trip);
	tcase_add_test(tc, config_to_yaml_refuses_invalid_config);
	tcase_add_test(tc, config_enum_names);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
