/* test-tokenizer.c - SentencePiece and fairseq dictionaries behind one API,
 * streaming decoding, UTF-8 checks and dictionary validation. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tokenizer.h"

/* Text the tiny model's corpus (tests/data/spm-corpus.txt) partly covers:
 * the crab, test tube, flag and some kanji are not in it, so they come
 * back as byte pieces. */
static const char multilingual[] =
	"Hello world, the state stays small.\n"
	"Grüße aus Köln: Äpfel, Öl, Übermut und Spaß.\n"
	"Καλημέρα κόσμε, ΑΒΓΔ ωψ.\n"
	"日本語のテキストです。漢字と鰻。\n"
	"Emoji: 😀🎉👍🦀🧪 and the flag 🇩🇪 too.";

static sb_tokenizer *load_spm(void)
{
	sb_error err = {0};
	sb_tokenizer *t = sb_tokenizer_load(SB_TOK_SENTENCEPIECE,
	                                    tu_src("tests/data/spm-tiny.model"),
	                                    SB_BYTES_AUTO, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	return t;
}

static sb_tokenizer *load_dict(const char *path, sb_bytes_mode bytes)
{
	sb_error err = {0};
	sb_tokenizer *t = sb_tokenizer_load(SB_TOK_FAIRSEQ, path, bytes, &err);
	ck_assert_msg(t != NULL, "%s: %s", path, err.msg);
	return t;
}

/* Loading must fail with code, and the message must contain every one of
 * the NULL-terminated needles. */
static void expect_dict_error(const char *content, sb_bytes_mode bytes,
                              int code, ...)
{
	const char *dir = tu_tmpdir();
	const char *path = tu_write_file(dir, "dict.txt", content, strlen(content));
	sb_error err = {0};
	sb_tokenizer *t = sb_tokenizer_load(SB_TOK_FAIRSEQ, path, bytes, &err);
	ck_assert_msg(t == NULL, "dict accepted: '%s'", content);
	ck_assert_int_eq(err.code, code);
	va_list ap;
	va_start(ap, code);
	for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
		ck_assert_msg(strstr(err.msg, s), "message '%s' lacks '%s'", err.msg, s);
	va_end(ap);
	ck_assert_msg(strstr(err.msg, path), "message '%s' does not name the file", err.msg);
}

static void encode(const sb_tokenizer *t, const char *text, bool bos,
                   int32_t **ids, size_t *n)
{
	sb_error err = {0};
	int rc = sb_tokenizer_encode(t, text, strlen(text), bos, ids, n, &err);
	ck_assert_msg(rc == 0, "%s", err.msg);
}

static char *decode_n(const sb_tokenizer *t, const int32_t *ids, size_t n,
                      size_t *len)
{
	sb_error err = {0};
	char *text = NULL;
	int rc = sb_tokenizer_decode(t, ids, n, &text, len, &err);
	ck_assert_msg(rc == 0, "%s", err.msg);
	ck_assert(text[*len] == 0);
	return text;
}

/* For texts without NUL bytes. */
static char *decode(const sb_tokenizer *t, const int32_t *ids, size_t n)
{
	size_t len;
	char *text = decode_n(t, ids, n, &len);
	ck_assert_uint_eq(strlen(text), len);
	return text;
}

/* The concatenated output of the streaming decoder, every push checked to
 * end on a character boundary. */
static char *stream_n(const sb_tokenizer *t, const int32_t *ids, size_t n,
                      bool at_start, size_t *out_len)
{
	sb_error err = {0};
	sb_detok *d = sb_detok_new(t, &err);
	ck_assert_msg(d != NULL, "%s", err.msg);
	sb_detok_reset(d, at_start);
	size_t cap = 64, len = 0;
	char *all = malloc(cap);
	ck_assert(all != NULL);
	const char *s;
	size_t sn;
	for (size_t i = 0; i <= n; i++) {
		if (i < n)
			ck_assert_msg(sb_detok_push(d, ids[i], &s, &sn, &err) == 0, "%s", err.msg);
		else
			sb_detok_flush(d, &s, &sn);
		ck_assert_uint_eq(sb_utf8_valid(s, sn), sn);
		while (len + sn + 1 > cap) {
			cap *= 2;
			all = realloc(all, cap);
			ck_assert(all != NULL);
		}
		memcpy(all + len, s, sn);
		len += sn;
	}
	all[len] = 0;
	sb_detok_free(d);
	*out_len = len;
	return all;
}

static char *stream(const sb_tokenizer *t, const int32_t *ids, size_t n,
                    bool at_start)
{
	size_t len;
	return stream_n(t, ids, n, at_start, &len);
}

/* Streaming ids gives exactly what decoding them all at once gives. */
static void expect_stream_equals_decode(const sb_tokenizer *t, const int32_t *ids,
                                        size_t n, const char *what, int which)
{
	size_t wl, sl;
	char *whole = decode_n(t, ids, n, &wl);
	char *streamed = stream_n(t, ids, n, true, &sl);
	ck_assert_msg(wl == sl && !memcmp(whole, streamed, wl),
	              "%s %d: decode '%s' (%zu bytes), stream '%s' (%zu bytes)",
	              what, which, whole, wl, streamed, sl);
	free(whole);
	free(streamed);
}

static int32_t spm_id_of(const sb_tokenizer *t, const char *piece)
{
	for (int32_t id = 0; id < sb_tokenizer_vocab_size(t); id++)
		if (!strcmp(sb_tokenizer_piece(t, id), piece))
			return id;
	ck_abort_msg("no piece '%s'", piece);
	return -1;
}

static int32_t spm_byte_id(const sb_tokenizer *t, uint8_t b)
{
	char piece[8];
	snprintf(piece, sizeof piece, "<0x%02X>", b);
	return spm_id_of(t, piece);
}

/* ------------------------------------------------------- SentencePiece */

START_TEST(tokenizer_spm_special_ids)
{
	sb_tokenizer *t = load_spm();
	/* as make-spm-model.sh asks spm_train */
	ck_assert_int_eq(sb_tokenizer_kind(t), SB_TOK_SENTENCEPIECE);
	ck_assert_int_eq(sb_tokenizer_vocab_size(t), 400);
	ck_assert_int_eq(sb_tokenizer_unk(t), 0);
	ck_assert_int_eq(sb_tokenizer_bos(t), 1);
	ck_assert_int_eq(sb_tokenizer_eos(t), 2);
	ck_assert_int_eq(sb_tokenizer_pad(t), -1);
	ck_assert_str_eq(sb_tokenizer_piece(t, 1), "<s>");
	ck_assert_str_eq(sb_tokenizer_piece(t, 2), "</s>");
	ck_assert(sb_tokenizer_piece(t, 400) == NULL);
	ck_assert(sb_tokenizer_piece(t, -1) == NULL);
	ck_assert(!sb_tokenizer_is_bytes(t));
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_spm_round_trip_multilingual)
{
	sb_tokenizer *t = load_spm();
	int32_t *ids;
	size_t n;
	encode(t, multilingual, false, &ids, &n);
	ck_assert_uint_gt(n, 20);
	ck_assert_int_ne(ids[0], sb_tokenizer_bos(t));
	char *back = decode(t, ids, n);
	ck_assert_str_eq(back, multilingual);
	free(back);
	free(ids);

	encode(t, multilingual, true, &ids, &n);
	ck_assert_int_eq(ids[0], 1);
	back = decode(t, ids, n);
	ck_assert_str_eq(back, multilingual);
	free(back);
	free(ids);
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_spm_unseen_characters_become_byte_pieces)
{
	sb_tokenizer *t = load_spm();
	int32_t *ids;
	size_t n;
	encode(t, "\xF0\x9F\xA6\x80", false, &ids, &n);   /* U+1F980 crab */
	/* the space the model prefixes, then the crab's four bytes */
	ck_assert_uint_eq(n, 5);
	ck_assert_str_eq(sb_tokenizer_piece(t, ids[0]), "\xE2\x96\x81");
	const uint8_t crab[4] = {0xF0, 0x9F, 0xA6, 0x80};
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(ids[1 + i], spm_byte_id(t, crab[i]));
	char *back = decode(t, ids + 1, 4);
	ck_assert_str_eq(back, "\xF0\x9F\xA6\x80");
	free(back);
	free(ids);
	sb_tokenizer_free(t);
}
END_TEST

/* Sequences no encoder makes: leading bare spaces, byte runs cut by a
 * control piece or a word, lone continuation bytes, unknown pieces; then
 * random id sequences over the whole vocabulary. */
static void stream_matches_decode_on_odd_sequences(const sb_tokenizer *t)
{
	int32_t sp = spm_id_of(t, "\xE2\x96\x81");
	int32_t w = -1;
	for (int32_t id = 0; id < sb_tokenizer_vocab_size(t) && w < 0; id++) {
		const char *p = sb_tokenizer_piece(t, id);
		if (!strncmp(p, "\xE2\x96\x81", 3) && strlen(p) > 4)
			w = id;
	}
	ck_assert_int_ge(w, 0);
	int32_t f0 = spm_byte_id(t, 0xF0), x9f = spm_byte_id(t, 0x9F),
	        xa6 = spm_byte_id(t, 0xA6), x80 = spm_byte_id(t, 0x80),
	        xc3 = spm_byte_id(t, 0xC3), xe0 = spm_byte_id(t, 0xE0);
	const int32_t cases[][8] = {
		{sp, sp, w, w, -1},
		{1, sp, w, 2, w, -1},
		{f0, x9f, 2, xa6, x80, w, -1},
		{x80, x80, w, f0, x9f, xa6, -1},
		{xc3, w, xe0, x80, x80, sp, -1},
		{0, w, 0, sp, -1},
		{1, f0, w, -1},
		{sp, f0, x9f, xa6, x80, sp, w, -1},
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		size_t k = 0;
		while (cases[c][k] >= 0)
			k++;
		expect_stream_equals_decode(t, cases[c], k, "case", (int)c);
	}

	uint64_t rng = 12345;
	int32_t seq[40];
	for (int trial = 0; trial < 300; trial++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		size_t k = 1 + (rng >> 33) % 40;
		for (size_t i = 0; i < k; i++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			seq[i] = (int32_t)((rng >> 33) % 400);
		}
		expect_stream_equals_decode(t, seq, k, "trial", trial);
	}
}

START_TEST(tokenizer_spm_stream_matches_decode)
{
	sb_tokenizer *t = load_spm();
	int32_t *ids;
	size_t n;
	encode(t, multilingual, true, &ids, &n);
	char *whole = decode(t, ids, n);
	char *streamed = stream(t, ids, n, true);
	ck_assert_str_eq(streamed, whole);
	ck_assert_str_eq(streamed, multilingual);
	free(streamed);
	free(whole);
	free(ids);

	stream_matches_decode_on_odd_sequences(t);
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_spm_stream_follows_whitespace_options)
{
	sb_error err = {0};
	sb_tokenizer *t = sb_tokenizer_load(SB_TOK_SENTENCEPIECE,
	                                    tu_src("tests/data/spm-tiny-spaces.model"),
	                                    SB_BYTES_AUTO, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	const char *text = "two  spaces   kept";
	int32_t *ids;
	size_t n;
	encode(t, text, true, &ids, &n);
	char *back = decode(t, ids, n);
	ck_assert_str_eq(back, text);
	free(back);
	back = stream(t, ids, n, true);
	ck_assert_str_eq(back, text);
	free(back);
	free(ids);
	/* Only the first leading space goes: "_" "_" "_x" reads "  x"... */
	int32_t sp = spm_id_of(t, "\xE2\x96\x81");
	const int32_t three[] = {sp, sp, sp};
	back = stream(t, three, 3, true);
	ck_assert_str_eq(back, "  ");
	free(back);
	stream_matches_decode_on_odd_sequences(t);
	sb_tokenizer_free(t);

	/* ...where the default model drops every leading one. */
	t = load_spm();
	sp = spm_id_of(t, "\xE2\x96\x81");
	const int32_t three2[] = {sp, sp, sp};
	back = stream(t, three2, 3, true);
	ck_assert_str_eq(back, "");
	free(back);
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_spm_stream_keeps_space_mid_text)
{
	sb_tokenizer *t = load_spm();
	int32_t *ids;
	size_t n;
	encode(t, "Hello world", false, &ids, &n);
	ck_assert(!strncmp(sb_tokenizer_piece(t, ids[0]), "\xE2\x96\x81", 3));
	char *s = stream(t, ids, n, true);
	ck_assert_str_eq(s, "Hello world");
	free(s);
	s = stream(t, ids, n, false);
	ck_assert_str_eq(s, " Hello world");
	free(s);
	free(ids);
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_stream_never_splits_code_point)
{
	sb_tokenizer *t = load_spm();
	const uint8_t crab[4] = {0xF0, 0x9F, 0xA6, 0x80};
	sb_error err = {0};
	sb_detok *d = sb_detok_new(t, &err);
	ck_assert(d != NULL);
	const char *s;
	size_t sn;
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(sb_detok_push(d, spm_byte_id(t, crab[i]), &s, &sn, &err), 0);
		if (i < 3) {
			ck_assert_uint_eq(sn, 0);
		} else {
			ck_assert_uint_eq(sn, 4);
			ck_assert(!memcmp(s, crab, 4));
		}
	}
	sb_detok_flush(d, &s, &sn);
	ck_assert_uint_eq(sn, 0);

	/* Three bytes of the four, then the end: one U+FFFD per byte, as
	 * SentencePiece's decoder does. */
	sb_detok_reset(d, true);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(sb_detok_push(d, spm_byte_id(t, crab[i]), &s, &sn, &err), 0);
		ck_assert_uint_eq(sn, 0);
	}
	sb_detok_flush(d, &s, &sn);
	ck_assert_uint_eq(sn, 9);
	ck_assert(!memcmp(s, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 9));
	sb_detok_free(d);
	sb_tokenizer_free(t);

	/* The same through a fairseq byte dictionary. */
	const char *dir = tu_tmpdir();
	char dict[256 * 8], *w = dict;
	for (int b = 0; b < 256; b++)
		w += sprintf(w, "%d 1\n", b);
	t = load_dict(tu_write_file(dir, "dict.txt", dict, strlen(dict)), SB_BYTES_AUTO);
	d = sb_detok_new(t, &err);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(sb_detok_push(d, 4 + crab[i], &s, &sn, &err), 0);
		ck_assert_uint_eq(sn, i < 3 ? 0 : 4);
	}
	ck_assert(!memcmp(s, crab, 4));
	sb_detok_free(d);
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_spm_rejects_bad_model)
{
	const char *dir = tu_tmpdir();
	const char *path = tu_write_file(dir, "tokenizer.model", "not a model", 11);
	sb_error err = {0};
	ck_assert(sb_tokenizer_load(SB_TOK_SENTENCEPIECE, path, SB_BYTES_AUTO, &err) == NULL);
	ck_assert_int_lt(err.code, 0);
	ck_assert_msg(strstr(err.msg, path), "%s", err.msg);

	char missing[4200];
	snprintf(missing, sizeof missing, "%s/nothing.model", dir);
	ck_assert(sb_tokenizer_load(SB_TOK_SENTENCEPIECE, missing, SB_BYTES_AUTO, &err) == NULL);
	ck_assert_int_lt(err.code, 0);
	ck_assert_msg(strstr(err.msg, "nothing.model"), "%s", err.msg);
}
END_TEST

/* ----------------------------------------------------- fairseq: words */

START_TEST(tokenizer_fairseq_word_dict)
{
	const char *path = tu_fixture("rotary-softmax/dict.txt");
	/* What the test expects comes from the file itself. */
	FILE *f = fopen(path, "r");
	ck_assert(f != NULL);
	char line[1024], first[64] = "", last[64] = "";
	int n_lines = 0;
	while (fgets(line, sizeof line, f)) {
		char *sp = strrchr(line, ' ');
		ck_assert(sp != NULL);
		*sp = 0;
		snprintf(n_lines ? last : first, 64, "%.60s", line);
		n_lines++;
	}
	fclose(f);
	ck_assert_int_gt(n_lines, 8);

	sb_tokenizer *t = load_dict(path, SB_BYTES_AUTO);
	ck_assert_int_eq(sb_tokenizer_kind(t), SB_TOK_FAIRSEQ);
	ck_assert(!sb_tokenizer_is_bytes(t));
	ck_assert_int_eq(sb_tokenizer_vocab_size(t), 4 + n_lines);
	ck_assert_int_eq(sb_tokenizer_bos(t), 2);
	ck_assert_int_eq(sb_tokenizer_eos(t), 2);
	ck_assert_int_eq(sb_tokenizer_pad(t), 1);
	ck_assert_int_eq(sb_tokenizer_unk(t), 3);
	ck_assert_str_eq(sb_tokenizer_piece(t, 0), "<s>");
	ck_assert_str_eq(sb_tokenizer_piece(t, 2), "</s>");
	ck_assert_str_eq(sb_tokenizer_piece(t, 4), first);
	ck_assert_str_eq(sb_tokenizer_piece(t, 3 + n_lines), last);
	ck_assert(sb_tokenizer_piece(t, 4 + n_lines) == NULL);

	char text[512];
	snprintf(text, sizeof text, "%s  %s\t%s\nnosuchword %s", first, last, first, last);
	int32_t *ids;
	size_t n;
	encode(t, text, false, &ids, &n);
	const int32_t want[] = {4, 3 + n_lines, 4, 2, 3, 3 + n_lines};
	ck_assert_uint_eq(n, 6);
	for (size_t i = 0; i < n; i++)
		ck_assert_int_eq(ids[i], want[i]);
	free(ids);

	/* A newline-terminated last line ends with </s>; bos is </s> too. */
	snprintf(text, sizeof text, "%s %s\n\n%s\n", first, last, first);
	encode(t, text, true, &ids, &n);
	const int32_t want2[] = {2, 4, 3 + n_lines, 2, 2, 4, 2};
	ck_assert_uint_eq(n, 7);
	for (size_t i = 0; i < n; i++)
		ck_assert_int_eq(ids[i], want2[i]);
	char *back = decode(t, ids, n);
	ck_assert_str_eq(back, text);
	free(back);
	char *s = stream(t, ids, n, true);
	ck_assert_str_eq(s, text);
	free(s);
	/* Mid-text, a first </s> is a newline and a first word gets its space. */
	s = stream(t, ids, n, false);
	snprintf(line, sizeof line, "\n%s", text);
	ck_assert_str_eq(s, line);
	free(s);
	s = stream(t, ids + 1, n - 1, false);
	snprintf(line, sizeof line, " %s", text);
	ck_assert_str_eq(s, line);
	free(s);
	free(ids);

	const int32_t with_unk[] = {1, 4, 3, 0, 2, 2, 4};
	back = decode(t, with_unk, 7);
	snprintf(line, sizeof line, "%s <unk>\n\n%s", first, first);
	ck_assert_str_eq(back, line);
	free(back);

	encode(t, "", true, &ids, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(ids[0], 2);
	free(ids);
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_fairseq_overwrite_flag)
{
	const char *dir = tu_tmpdir();
	const char *d = "a 10\nb 5\na 3 #fairseq:overwrite\nc d 2\n";
	sb_tokenizer *t = load_dict(tu_write_file(dir, "dict.txt", d, strlen(d)), SB_BYTES_AUTO);
	ck_assert_int_eq(sb_tokenizer_vocab_size(t), 8);
	ck_assert_str_eq(sb_tokenizer_piece(t, 6), "a");
	ck_assert_str_eq(sb_tokenizer_piece(t, 7), "c d");
	int32_t *ids;
	size_t n;
	encode(t, "a b", false, &ids, &n);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(ids[0], 6);   /* the later line wins, as in fairseq */
	ck_assert_int_eq(ids[1], 5);
	free(ids);
	sb_tokenizer_free(t);
}
END_TEST

/* ----------------------------------------------------- fairseq: bytes */

/* A 256-symbol byte dictionary in a scrambled order; order[i] is the byte
 * of id 4 + i. */
static const char *write_byte_dict(const char *dir, int order[256])
{
	char dict[256 * 8], *w = dict;
	for (int i = 0; i < 256; i++) {
		order[i] = (i * 167 + 13) % 256;   /* 167 is odd: a permutation */
		w += sprintf(w, "%d %d\n", order[i], 1000 - i);
	}
	return tu_write_file(dir, "dict.txt", dict, strlen(dict));
}

START_TEST(tokenizer_fairseq_byte_dict_round_trip)
{
	int order[256], id_of[256];
	sb_tokenizer *t = load_dict(write_byte_dict(tu_tmpdir(), order), SB_BYTES_AUTO);
	for (int i = 0; i < 256; i++)
		id_of[order[i]] = 4 + i;
	ck_assert(sb_tokenizer_is_bytes(t));
	ck_assert_int_eq(sb_tokenizer_vocab_size(t), 260);

	int32_t *ids;
	size_t n, len = strlen(multilingual);
	encode(t, multilingual, true, &ids, &n);
	ck_assert_uint_eq(n, len + 1);
	ck_assert_int_eq(ids[0], 2);
	for (size_t i = 0; i < len; i++) {
		uint8_t b = (uint8_t)multilingual[i];
		ck_assert_int_eq(ids[1 + i], b == '\n' ? 2 : id_of[b]);
	}
	char *back = decode(t, ids, n);
	ck_assert_str_eq(back, multilingual);
	char *s = stream(t, ids, n, true);
	ck_assert_str_eq(s, multilingual);
	free(s);
	free(back);
	free(ids);

	/* A text that starts with a newline keeps it after the bos. */
	encode(t, "\nx\n", true, &ids, &n);
	ck_assert_uint_eq(n, 4);
	back = decode(t, ids, n);
	ck_assert_str_eq(back, "\nx\n");
	free(back);
	free(ids);

	/* Bytes that are no UTF-8 decode to U+FFFD, streamed or not. */
	const int32_t bad[] = {id_of[0xC3], id_of['A'], id_of[0xE2], id_of[0x82], 2};
	back = decode(t, bad, 5);
	ck_assert_str_eq(back, "\xEF\xBF\xBD" "A" "\xEF\xBF\xBD\xEF\xBF\xBD\n");
	s = stream(t, bad, 5, true);
	ck_assert_str_eq(s, back);
	free(s);
	free(back);
	sb_tokenizer_free(t);

	/* A byte without a symbol is <unk>, which reads back as U+FFFD. */
	const char *dir = tu_tmpdir();
	char dict[128 * 8], *w = dict;
	for (int b = 32; b < 127; b++)
		w += sprintf(w, "%d 1\n", b);
	t = load_dict(tu_write_file(dir, "dict.txt", dict, strlen(dict)), SB_BYTES_AUTO);
	ck_assert(sb_tokenizer_is_bytes(t));
	encode(t, "a\xC3\xA9", false, &ids, &n);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(ids[0], 4 + 'a' - 32);
	ck_assert_int_eq(ids[1], 3);
	ck_assert_int_eq(ids[2], 3);
	back = decode(t, ids, n);
	ck_assert_str_eq(back, "a\xEF\xBF\xBD\xEF\xBF\xBD");
	free(back);
	free(ids);
	sb_tokenizer_free(t);
}
END_TEST

START_TEST(tokenizer_fairseq_detects_byte_form)
{
	int order[256];
	const char *bytes_path = write_byte_dict(tu_tmpdir(), order);
	sb_tokenizer *t = load_dict(bytes_path, SB_BYTES_OFF);
	ck_assert(!sb_tokenizer_is_bytes(t));
	int32_t *ids;
	size_t n;
	char word[8];
	snprintf(word, sizeof word, "%d", order[7]);
	encode(t, word, false, &ids, &n);   /* a word, not its bytes */
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(ids[0], 4 + 7);
	free(ids);
	sb_tokenizer_free(t);

	t = load_dict(bytes_path, SB_BYTES_ON);
	ck_assert(sb_tokenizer_is_bytes(t));
	sb_tokenizer_free(t);

	t = load_dict(tu_fixture("rotary-softmax/dict.txt"), SB_BYTES_AUTO);
	ck_assert(!sb_tokenizer_is_bytes(t));
	sb_tokenizer_free(t);

	/* Numbers that are not canonical bytes keep the word form. */
	const char *dir = tu_tmpdir();
	const char *d = "32 5\n007 4\n";
	t = load_dict(tu_write_file(dir, "dict.txt", d, strlen(d)), SB_BYTES_AUTO);
	ck_assert(!sb_tokenizer_is_bytes(t));
	sb_tokenizer_free(t);
	d = "32 5\n256 4\n";
	t = load_dict(tu_write_file(dir, "dict.txt", d, strlen(d)), SB_BYTES_AUTO);
	ck_assert(!sb_tokenizer_is_bytes(t));
	sb_tokenizer_free(t);

	expect_dict_error("32 5\n104 3\nw4 2\n", SB_BYTES_ON, SB_ERR_FORMAT,
	                  "dict.txt:3", "'w4'", NULL);
	expect_dict_error("32 5\n104 3\n32 2 #fairseq:overwrite\n", SB_BYTES_ON,
	                  SB_ERR_FORMAT, "dict.txt:3", "line 1", NULL);
}
END_TEST

START_TEST(tokenizer_rejects_malformed_dicts)
{
	expect_dict_error("", SB_BYTES_AUTO, SB_ERR_FORMAT, "empty", NULL);
	expect_dict_error("a 1\nb 2\na 3\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:3", "duplicate", "'a'", "line 1", NULL);
	expect_dict_error("a 1\nb\nc 3\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:2", "count", NULL);
	/* a file cut off in the middle of its last line */
	expect_dict_error("a 1\nb 2\nc", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:3", "count", NULL);
	expect_dict_error("a 1\nb -2\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:2", "non-negative integer", NULL);
	expect_dict_error("a 1\nb 2x\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:2", "non-negative integer", NULL);
	expect_dict_error("a 1\n\nb 2\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:2", "empty line", NULL);
	expect_dict_error("a 1\n 5\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:2", "empty symbol", NULL);
	expect_dict_error("a 1\n</s> 5\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:2", "'</s>'", NULL);
	expect_dict_error("a 1\n\xC3\x28 5\n", SB_BYTES_AUTO, SB_ERR_FORMAT,
	                  "dict.txt:2", "UTF-8", NULL);
	expect_dict_error("a 1\nb 99999999999999999999999\n", SB_BYTES_AUTO,
	                  SB_ERR_FORMAT, "dict.txt:2", NULL);

	sb_error err = {0};
	char missing[4200];
	snprintf(missing, sizeof missing, "%s/dict.txt", tu_tmpdir());
	ck_assert(sb_tokenizer_load(SB_TOK_FAIRSEQ, missing, SB_BYTES_AUTO, &err) == NULL);
	ck_assert_int_eq(err.code, SB_ERR_IO);
	ck_assert_msg(strstr(err.msg, missing), "%s", err.msg);

	/* Windows line ends and no final newline are fine. */
	const char *d = "a 1\r\nb 2";
	sb_tokenizer *t = load_dict(tu_write_file(tu_tmpdir(), "dict.txt", d, strlen(d)),
	                            SB_BYTES_AUTO);
	ck_assert_int_eq(sb_tokenizer_vocab_size(t), 6);
	ck_assert_str_eq(sb_tokenizer_piece(t, 4), "a");
	ck_assert_str_eq(sb_tokenizer_piece(t, 5), "b");
	sb_tokenizer_free(t);
}
END_TEST

/* -------------------------------------------------------- UTF-8, range */

START_TEST(tokenizer_rejects_invalid_utf8)
{
	static const struct { const char *s; size_t off; } bad[] = {
		{"ab\xC3(", 2},                 /* lead byte without continuation */
		{"\x80x", 0},                   /* lone continuation byte */
		{"ok \xC0\xAF", 3},             /* overlong '/' */
		{"s\xED\xA0\x80", 1},           /* surrogate U+D800 */
		{"\xF4\x90\x80\x80", 0},        /* above U+10FFFF */
		{"abc\xE2\x82", 3},             /* cut at the end */
		{"\xC3\xA9\xF8", 2},            /* never a UTF-8 byte */
	};
	sb_tokenizer *toks[2] = {load_spm(), load_dict(tu_fixture("rotary-softmax/dict.txt"),
	                                                SB_BYTES_AUTO)};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		size_t len = strlen(bad[i].s);
		ck_assert_uint_eq(sb_utf8_valid(bad[i].s, len), bad[i].off);
		for (int k = 0; k < 2; k++) {
			sb_error err = {0};
			int32_t *ids = NULL;
			size_t n = 0;
			int rc = sb_tokenizer_encode(toks[k], bad[i].s, len, true, &ids, &n, &err);
			ck_assert_int_eq(rc, SB_ERR_FORMAT);
			char want[32];
			snprintf(want, sizeof want, "offset %zu", bad[i].off);
			ck_assert_msg(strstr(err.msg, want), "'%s' lacks '%s'", err.msg, want);
		}
	}
	const char *good = "\xEF\xBF\xBD \xF4\x8F\xBF\xBF \xE0\xA0\x80";
	ck_assert_uint_eq(sb_utf8_valid(good, strlen(good)), strlen(good));
	sb_tokenizer_free(toks[0]);
	sb_tokenizer_free(toks[1]);
}
END_TEST

START_TEST(tokenizer_decode_rejects_out_of_range_ids)
{
	sb_tokenizer *t = load_spm();
	const int32_t ids[] = {5, 400};
	sb_error err = {0};
	char *text = NULL;
	size_t len;
	ck_assert_int_eq(sb_tokenizer_decode(t, ids, 2, &text, &len, &err), SB_ERR_ARG);
	ck_assert_msg(strstr(err.msg, "400") && strstr(err.msg, "position 1"), "%s", err.msg);
	sb_detok *d = sb_detok_new(t, &err);
	const char *s;
	ck_assert_int_eq(sb_detok_push(d, -1, &s, &len, &err), SB_ERR_ARG);
	sb_detok_free(d);
	sb_tokenizer_free(t);
}
END_TEST

/* ------------------------------------------------------- for a model */

static const char *fixture_model(const char *name)
{
	static char buf[4096];
	const char *root = getenv("SB_FIXTURE_MODELS");
	ck_assert_msg(root && *root, "SB_FIXTURE_MODELS is not set");
	snprintf(buf, sizeof buf, "%s/%s", root, name);
	return buf;
}

/* A copy of a fixture model directory whose dict.txt gets `extra`. */
static const char *copy_model(const char *name, const char *extra)
{
	const char *src = fixture_model(name);
	const char *dst = tu_tmpdir();
	static char out[4096];
	snprintf(out, sizeof out, "%s", dst);
	const char *files[] = {"config.yaml", "model.safetensors", "dict.txt"};
	for (size_t i = 0; i < 3; i++) {
		char path[4200];
		snprintf(path, sizeof path, "%s/%s", src, files[i]);
		FILE *f = fopen(path, "rb");
		ck_assert_msg(f != NULL, "cannot open %s", path);
		size_t cap = 1 << 20, len = 0, got;
		char *buf = malloc(cap);
		ck_assert(buf != NULL);
		while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
			len += got;
			if (len == cap) {
				cap *= 2;
				buf = realloc(buf, cap);
				ck_assert(buf != NULL);
			}
		}
		fclose(f);
		if (!strcmp(files[i], "dict.txt")) {
			size_t n = strlen(extra);
			buf = realloc(buf, len + n);
			ck_assert(buf != NULL);
			memcpy(buf + len, extra, n);
			len += n;
		}
		tu_write_file(out, files[i], buf, len);
		free(buf);
	}
	return out;
}

START_TEST(tokenizer_load_for_model)
{
	sb_error err = {0};
	sb_model *m = sb_model_load(fixture_model("rotary-softmax"), &err);
	ck_assert_msg(m != NULL, "%s", err.msg);
	sb_tokenizer *t = sb_tokenizer_load_for_model(m, SB_BYTES_AUTO, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_assert_int_eq(sb_tokenizer_kind(t), SB_TOK_FAIRSEQ);
	ck_assert(!sb_tokenizer_is_bytes(t));
	ck_assert_int_le(sb_tokenizer_vocab_size(t), sb_model_config(m)->vocab_size);
	ck_assert_int_eq(sb_tokenizer_bos(t), sb_model_config(m)->bos_id);
	ck_assert_int_eq(sb_tokenizer_eos(t), sb_model_config(m)->eos_id);
	ck_assert_int_eq(sb_tokenizer_pad(t), sb_model_config(m)->pad_id);
	ck_assert_int_eq(sb_tokenizer_unk(t), sb_model_config(m)->unk_id);
	sb_tokenizer_free(t);
	/* The override wins over the config's auto. */
	ck_assert(sb_tokenizer_load_for_model(m, SB_BYTES_ON, &err) == NULL);
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_msg(strstr(err.msg, "dict.txt:1"), "%s", err.msg);
	sb_model_free(m);

	/* A dictionary with more ids than the embedding has rows. */
	const sb_config *c;
	char extra[64 * 16] = "", *w = extra;
	m = sb_model_load(fixture_model("rotary-softmax"), &err);
	ck_assert(m != NULL);
	c = sb_model_config(m);
	t = sb_tokenizer_load_for_model(m, SB_BYTES_AUTO, &err);
	ck_assert(t != NULL);
	int spare = c->vocab_size - sb_tokenizer_vocab_size(t);
	sb_tokenizer_free(t);
	sb_model_free(m);
	for (int i = 0; i <= spare; i++)
		w += sprintf(w, "extra%d 1\n", i);
	m = sb_model_load(copy_model("rotary-softmax", extra), &err);
	ck_assert_msg(m != NULL, "%s", err.msg);
	ck_assert(sb_tokenizer_load_for_model(m, SB_BYTES_AUTO, &err) == NULL);
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_msg(strstr(err.msg, "vocab_size"), "%s", err.msg);
	sb_model_free(m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("tokenizer");
	TCase *tc = tcase_create("tokenizer");
	tcase_add_test(tc, tokenizer_spm_special_ids);
	tcase_add_test(tc, tokenizer_spm_round_trip_multilingual);
	tcase_add_test(tc, tokenizer_spm_unseen_characters_become_byte_pieces);
	tcase_add_test(tc, tokenizer_spm_stream_matches_decode);
	tcase_add_test(tc, tokenizer_spm_stream_follows_whitespace_options);
	tcase_add_test(tc, tokenizer_spm_stream_keeps_space_mid_text);
	tcase_add_test(tc, tokenizer_stream_never_splits_code_point);
	tcase_add_test(tc, tokenizer_spm_rejects_bad_model);
	tcase_add_test(tc, tokenizer_fairseq_word_dict);
	tcase_add_test(tc, tokenizer_fairseq_overwrite_flag);
	tcase_add_test(tc, tokenizer_fairseq_byte_dict_round_trip);
	tcase_add_test(tc, tokenizer_fairseq_detects_byte_form);
	tcase_add_test(tc, tokenizer_rejects_malformed_dicts);
	tcase_add_test(tc, tokenizer_rejects_invalid_utf8);
	tcase_add_test(tc, tokenizer_decode_rejects_out_of_range_ids);
	tcase_add_test(tc, tokenizer_load_for_model);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
