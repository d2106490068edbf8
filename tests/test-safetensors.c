/* test-safetensors.c - the validating reader, the atomic writer, the
 * official fixture. Malformed inputs are built byte by byte here, so each
 * case breaks exactly one rule. */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

#define LABEL "m.safetensors"

/* A file image: u64 LE header length, the header text, then data_len
 * bytes of data counting up from 0. hlen_override (if not 0) replaces
 * the header length field. */
static uint8_t *image(const char *header, size_t data_len, uint64_t hlen_override,
                      size_t *len)
{
	size_t h = strlen(header);
	*len = 8 + h + data_len;
	uint8_t *buf = malloc(*len ? *len : 1);
	ck_assert_ptr_nonnull(buf);
	uint64_t hl = hlen_override ? hlen_override : h;
	for (int i = 0; i < 8; i++)
		buf[i] = (uint8_t)(hl >> (8 * i));
	memcpy(buf + 8, header, h);
	for (size_t i = 0; i < data_len; i++)
		buf[8 + h + i] = (uint8_t)i;
	return buf;
}

/* Opens the image from memory and asserts it is refused with code and a
 * message containing want. */
static void refused(const char *header, size_t data_len, int code,
                    const char *want)
{
	size_t len;
	uint8_t *buf = image(header, data_len, 0, &len);
	sb_error err = {0};
	sb_st_file *f = sb_st_open_memory(buf, len, LABEL, &err);
	ck_assert_msg(f == NULL, "accepted: %s", header);
	ck_assert_int_eq(err.code, code);
	ck_assert_msg(strncmp(err.msg, LABEL ": ", strlen(LABEL) + 2) == 0,
	              "message does not name the file: %s", err.msg);
	ck_assert_msg(strstr(err.msg, want) != NULL, "'%s' lacks '%s'", err.msg, want);
	free(buf);
}

START_TEST(safetensors_rejects_truncated_file)
{
	static const uint8_t five[5] = {1, 0, 0, 0, 0};
	sb_error err = {0};
	ck_assert_ptr_null(sb_st_open_memory(five, sizeof five, LABEL, &err));
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_str_eq(err.msg, LABEL ": file is 5 bytes, too short for the 8-byte header length");

	/* The same through the file path, which names the path. */
	const char *dir = tu_tmpdir();
	const char *p = tu_write_file(dir, "short.safetensors", five, 3);
	ck_assert_ptr_null(sb_st_open(p, &err));
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, "short.safetensors: file is 3 bytes"));

	p = tu_write_file(dir, "empty.safetensors", "", 0);
	ck_assert_ptr_null(sb_st_open(p, &err));
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, "file is 0 bytes"));
}
END_TEST

START_TEST(safetensors_rejects_header_past_eof)
{
	size_t len;
	uint8_t *buf = image("{}", 0, 100, &len);
	sb_error err = {0};
	ck_assert_ptr_null(sb_st_open_memory(buf, len, LABEL, &err));
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_str_eq(err.msg, LABEL ": header length 100 runs past the end of the file (10 bytes)");
	free(buf);
}
END_TEST

START_TEST(safetensors_rejects_header_over_100mb)
{
	size_t len;
	uint8_t *buf = image("{}", 0, 100000001, &len);
	sb_error err = {0};
	ck_assert_ptr_null(sb_st_open_memory(buf, len, LABEL, &err));
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_ptr_nonnull(strstr(err.msg, "header length 100000001 exceeds the limit"));
	free(buf);
	/* A huge 64-bit length must not wrap around the bounds check. */
	buf = image("{}", 0, UINT64_MAX, &len);
	ck_assert_ptr_null(sb_st_open_memory(buf, len, LABEL, &err));
	ck_assert_ptr_nonnull(strstr(err.msg, "exceeds the limit"));
	free(buf);
}
END_TEST

START_TEST(safetensors_rejects_non_object_header)
{
	refused("[1, 2]", 0, SB_ERR_FORMAT, "header is not a JSON object");
}
END_TEST

START_TEST(safetensors_rejects_invalid_json)
{
	refused("{\"x\": {\"dtype\": \"F32\", ", 0, SB_ERR_FORMAT, "header is not valid JSON");
	refused("", 0, SB_ERR_FORMAT, "header is not valid JSON");
	refused("{} {}", 0, SB_ERR_FORMAT, "header is not valid JSON");
}
END_TEST

START_TEST(safetensors_rejects_duplicate_names)
{
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
	        "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
	        2, SB_ERR_FORMAT, "duplicate");
}
END_TEST

START_TEST(safetensors_rejects_unknown_dtype)
{
	refused("{\"x\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
	        SB_ERR_FORMAT, "tensor 'x' has unknown dtype 'F8'");
	refused("{\"x\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
	        SB_ERR_FORMAT, "tensor 'x' has unknown dtype 'f32'");
	refused("{\"x\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
	        SB_ERR_FORMAT, "tensor 'x' dtype is not a string");
}
END_TEST

START_TEST(safetensors_rejects_overlapping_offsets)
{
	refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
	        12, SB_ERR_FORMAT,
	        "tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]");
	/* Two tensors over the very same bytes. */
	refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	        "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
	        8, SB_ERR_FORMAT, "overlap tensor");
}
END_TEST

START_TEST(safetensors_rejects_gapped_offsets)
{
	refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
	        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
	        12, SB_ERR_FORMAT,
	        "tensor 'b' data_offsets [8, 12] leave a gap: bytes [4, 8) belong to no tensor");
	refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
	        SB_ERR_FORMAT, "bytes [0, 4) belong to no tensor");
}
END_TEST

START_TEST(safetensors_rejects_trailing_bytes)
{
	refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 9,
	        SB_ERR_FORMAT, "5 trailing bytes after the last tensor (data area is 9 bytes, tensors end at 4)");
	refused("{}", 3, SB_ERR_FORMAT, "3 trailing bytes");
}
END_TEST

START_TEST(safetensors_rejects_byte_count_mismatch)
{
	size_t len;
	uint8_t *buf = image("{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}",
	                     12, 0, &len);
	sb_error err = {0};
	ck_assert_ptr_null(sb_st_open_memory(buf, len, LABEL, &err));
	ck_assert_int_eq(err.code, SB_ERR_FORMAT);
	ck_assert_str_eq(err.msg, "m.safetensors: tensor 'x' data_offsets [0, 12] hold 12 bytes, expected 16 (F32 [2, 2])");
	free(buf);
}
END_TEST

START_TEST(safetensors_rejects_shape_overflow)
{
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}",
	        0, SB_ERR_FORMAT, "tensor 'x' shape [4294967296, 4294967296] is too large");
	/* numel fits but numel x 8 bytes does not. */
	refused("{\"x\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952, 2],\"data_offsets\":[0,0]}}",
	        0, SB_ERR_FORMAT, "is too large");
}
END_TEST

START_TEST(safetensors_rejects_bad_shape_entries)
{
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
	        SB_ERR_FORMAT, "tensor 'x' shape[0] is not a non-negative integer");
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[1, 2.0],\"data_offsets\":[0,2]}}", 2,
	        SB_ERR_FORMAT, "tensor 'x' shape[1] is not a non-negative integer");
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":\"2\",\"data_offsets\":[0,2]}}", 2,
	        SB_ERR_FORMAT, "tensor 'x' shape is not an array");
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
	        SB_ERR_FORMAT, "shape has 9 dimensions, at most 8");
}
END_TEST

START_TEST(safetensors_rejects_missing_or_extra_fields)
{
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, SB_ERR_FORMAT,
	        "tensor 'x' has no data_offsets");
	refused("{\"x\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, SB_ERR_FORMAT,
	        "tensor 'x' has no dtype");
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":1}}", 1,
	        SB_ERR_FORMAT, "tensor 'x' has unknown field 'extra'");
	refused("{\"x\":[1]}", 0, SB_ERR_FORMAT, "tensor 'x' is not a JSON object");
}
END_TEST

START_TEST(safetensors_rejects_bad_data_offsets)
{
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
	        SB_ERR_FORMAT, "tensor 'x' data_offsets [4, 0] begin after end");
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
	        SB_ERR_FORMAT, "tensor 'x' data_offsets is not [begin, end]");
	refused("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
	        SB_ERR_FORMAT, "tensor 'x' data_offsets is not [begin, end]");
	refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
	        SB_ERR_FORMAT, "tensor 'x' data_offsets [0, 16] run past the data area (8 bytes)");
}
END_TEST

START_TEST(safetensors_rejects_bad_names_and_metadata)
{
	refused("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
	        SB_ERR_FORMAT, "a tensor has an empty name");
	refused("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
	        SB_ERR_FORMAT, "NUL byte in object key");
	refused("{\"__metadata__\":{\"k\":1}}", 0, SB_ERR_FORMAT,
	        "__metadata__ entry 'k' is not a string");
	refused("{\"__metadata__\":[\"k\"]}", 0, SB_ERR_FORMAT,
	        "__metadata__ is not a JSON object");
}
END_TEST

START_TEST(safetensors_open_reports_io_errors)
{
	sb_error err = {0};
	const char *dir = tu_tmpdir();
	char path[4200];
	snprintf(path, sizeof path, "%s/absent.safetensors", dir);
	ck_assert_ptr_null(sb_st_open(path, &err));
	ck_assert_int_eq(err.code, SB_ERR_IO);
	ck_assert_ptr_nonnull(strstr(err.msg, "absent.safetensors: cannot open"));
	ck_assert_ptr_null(sb_st_open(dir, &err));
	ck_assert_int_eq(err.code, SB_ERR_IO);
	ck_assert_ptr_nonnull(strstr(err.msg, "not a regular file"));
}
END_TEST

static void put_f32(uint8_t *p, float v)
{
	memcpy(p, &v, 4);
}

START_TEST(safetensors_copies_unaligned_data)
{
	/* A U8[2] first puts the F32 tensor at data offset 2; the header is
	 * chosen 8-aligned so only the offset misaligns. */
	const char *base = "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
	                   "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[2,14]}}";
	char header[256];
	size_t h = strlen(base);
	snprintf(header, sizeof header, "%s%*s", base, (int)((8 - h % 8) % 8), "");
	ck_assert_uint_eq(strlen(header) % 8, 0);
	size_t len;
	uint8_t *buf = image(header, 14, 0, &len);
	uint8_t *data = buf + 8 + strlen(header);
	data[0] = 7;
	data[1] = 9;
	const float want[3] = {1.5f, -2.25f, 1e-20f};
	for (int i = 0; i < 3; i++)
		put_f32(data + 2 + 4 * i, want[i]);

	sb_error err = {0};
	sb_st_file *f = sb_st_open_memory(buf, len, LABEL, &err);
	ck_assert_msg(f != NULL, "%s", err.msg);
	const sb_tensor *b = sb_st_find(f, "b");
	ck_assert_ptr_nonnull(b);
	ck_assert_uint_eq((uintptr_t)b->data % 4, 0);
	ck_assert_ptr_ne(b->data, data + 2);
	const float *v = b->data;
	for (int i = 0; i < 3; i++)
		ck_assert_float_eq(v[i], want[i]);
	const sb_tensor *a = sb_st_find(f, "a");
	ck_assert_ptr_eq(a->data, data);   /* bytes need no copy */
	ck_assert_uint_eq(((const uint8_t *)a->data)[1], 9);
	sb_st_close(f);
	free(buf);

	/* A header of odd length misaligns the whole data area. */
	buf = image("{\"c\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}  ",
	            16, 0, &len);
	ck_assert_uint_ne((len - 16) % 8, 0);
	int64_t iv[2] = {-5, INT64_MAX};
	memcpy(buf + len - 16, iv, 16);
	f = sb_st_open_memory(buf, len, LABEL, &err);
	ck_assert_msg(f != NULL, "%s", err.msg);
	const sb_tensor *c = sb_st_find(f, "c");
	ck_assert_uint_eq((uintptr_t)c->data % 8, 0);
	ck_assert_int_eq(((const int64_t *)c->data)[0], -5);
	ck_assert_int_eq(((const int64_t *)c->data)[1], INT64_MAX);
	sb_st_close(f);
	free(buf);
}
END_TEST

START_TEST(safetensors_accepts_empty_and_zero_sized)
{
	size_t len;
	sb_error err = {0};
	uint8_t *buf = image("{}", 0, 0, &len);
	sb_st_file *f = sb_st_open_memory(buf, len, LABEL, &err);
	ck_assert_msg(f != NULL, "%s", err.msg);
	ck_assert_uint_eq(sb_st_count(f), 0);
	ck_assert_ptr_null(sb_st_tensor_at(f, 0));
	ck_assert_ptr_null(sb_st_find(f, "x"));
	ck_assert_ptr_null(sb_st_metadata(f, "k"));
	ck_assert_uint_eq(sb_st_file_size(f), 10);
	sb_st_close(f);
	free(buf);

	buf = image("{\"__metadata__\":{\"format\":\"pt\"},"
	            "\"z\":{\"dtype\":\"F32\",\"shape\":[0, 5],\"data_offsets\":[4,4]},"
	            "\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, 0, &len);
	f = sb_st_open_memory(buf, len, LABEL, &err);
	ck_assert_msg(f != NULL, "%s", err.msg);
	ck_assert_uint_eq(sb_st_count(f), 2);
	ck_assert_str_eq(sb_st_metadata(f, "format"), "pt");
	/* In data order: the scalar first. */
	ck_assert_str_eq(sb_st_tensor_at(f, 0)->name, "s");
	const sb_tensor *s = sb_st_find(f, "s");
	ck_assert_int_eq(s->ndim, 0);
	ck_assert_uint_eq(s->numel, 1);
	ck_assert_uint_eq(s->nbytes, 4);
	const sb_tensor *z = sb_st_find(f, "z");
	ck_assert_uint_eq(z->numel, 0);
	ck_assert_uint_eq(z->nbytes, 0);
	ck_assert_uint_eq(z->shape[1], 5);
	sb_st_close(f);
	free(buf);
}
END_TEST

static size_t count_dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	ck_assert_ptr_nonnull(d);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

START_TEST(safetensors_write_read_round_trip)
{
	/* Every dtype, shapes from a scalar to 8 dimensions, bytes that differ
	 * from tensor to tensor so a swapped offset shows. */
	enum { NT = SB_DTYPE_COUNT + 2 };
	sb_st_entry e[NT];
	uint8_t *bufs[NT];
	char names[NT][32];
	memset(e, 0, sizeof e);
	for (int i = 0; i < NT; i++) {
		snprintf(names[i], sizeof names[i], "layers.%d.t%s", i, i % 2 ? ".weight" : "");
		e[i].name = names[i];
		e[i].dtype = (sb_dtype)(i % SB_DTYPE_COUNT);
		e[i].ndim = i % (SB_MAX_DIMS + 1);
		size_t numel = 1;
		for (int d = 0; d < e[i].ndim; d++) {
			e[i].shape[d] = (uint64_t)(1 + (i + d) % 3);
			numel *= e[i].shape[d];
		}
		size_t nb = numel * sb_dtype_size(e[i].dtype);
		bufs[i] = malloc(nb);
		for (size_t b = 0; b < nb; b++)
			bufs[i][b] = (uint8_t)(b * 7 + (size_t)i * 31 + 1);
		e[i].data = bufs[i];
	}
	/* A zero-element tensor in the middle. */
	e[5].ndim = 2;
	e[5].shape[0] = 3;
	e[5].shape[1] = 0;

	const char *dir = tu_tmpdir();
	char path[4200];
	snprintf(path, sizeof path, "%s/out.safetensors", dir);
	const char *meta[] = {"format", "pt", "note", "line\nbreak \"quoted\" é", NULL};
	sb_error err = {0};
	ck_assert_int_eq(sb_st_write(path, e, NT, meta, &err), SB_OK);
	ck_assert_uint_eq(count_dir_entries(dir), 1);   /* no temporary left */

	/* The header is padded to a multiple of 8 bytes. */
	FILE *fp = fopen(path, "rb");
	uint8_t head[8];
	ck_assert_uint_eq(fread(head, 1, 8, fp), 8);
	fclose(fp);
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | head[i];
	ck_assert_uint_eq(hlen % 8, 0);

	sb_st_file *f = sb_st_open(path, &err);
	ck_assert_msg(f != NULL, "%s", err.msg);
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(sb_st_file_size(f), (size_t)st.st_size);
	ck_assert_uint_eq(sb_st_count(f), NT);
	ck_assert_str_eq(sb_st_metadata(f, "format"), "pt");
	ck_assert_str_eq(sb_st_metadata(f, "note"), "line\nbreak \"quoted\" é");
	ck_assert_ptr_null(sb_st_metadata(f, "absent"));
	ck_assert_ptr_null(sb_st_find(f, "layers.0"));
	size_t total = 0;
	for (int i = 0; i < NT; i++) {
		/* Written in the given order, so read back in it. */
		const sb_tensor *t = sb_st_tensor_at(f, (size_t)i);
		ck_assert_str_eq(t->name, e[i].name);
		ck_assert_ptr_eq(sb_st_find(f, e[i].name), t);
		ck_assert_int_eq(t->dtype, e[i].dtype);
		ck_assert_int_eq(t->ndim, e[i].ndim);
		uint64_t numel = 1;
		for (int d = 0; d < t->ndim; d++) {
			ck_assert_uint_eq(t->shape[d], e[i].shape[d]);
			numel *= e[i].shape[d];
		}
		ck_assert_uint_eq(t->numel, numel);
		ck_assert_uint_eq(t->nbytes, numel * sb_dtype_size(e[i].dtype));
		ck_assert_uint_eq((uintptr_t)t->data % sb_dtype_size(t->dtype), 0);
		ck_assert_int_eq(memcmp(t->data, bufs[i], t->nbytes), 0);
		total += t->nbytes;
	}
	ck_assert_uint_eq(sb_st_file_size(f), 8 + hlen + total);
	sb_st_close(f);

	/* Writing again replaces the file. */
	ck_assert_int_eq(sb_st_write(path, e, 1, NULL, &err), SB_OK);
	f = sb_st_open(path, &err);
	ck_assert_msg(f != NULL, "%s", err.msg);
	ck_assert_uint_eq(sb_st_count(f), 1);
	ck_assert_ptr_null(sb_st_metadata(f, "format"));
	sb_st_close(f);
	ck_assert_uint_eq(count_dir_entries(dir), 1);
	for (int i = 0; i < NT; i++)
		free(bufs[i]);
}
END_TEST

START_TEST(safetensors_write_refuses_bad_entries)
{
	const char *dir = tu_tmpdir();
	char path[4200];
	snprintf(path, sizeof path, "%s/w.safetensors", dir);
	float v[2] = {1, 2};
	sb_st_entry e[2] = {
		{.name = "a", .dtype = SB_DTYPE_F32, .ndim = 1, .shape = {2}, .data = v},
		{.name = "a", .dtype = SB_DTYPE_F32, .ndim = 1, .shape = {2}, .data = v},
	};
	/* An old file must survive a refused write untouched. */
	ck_assert_int_eq(sb_st_write(path, e, 1, NULL, NULL), SB_OK);
	struct stat before;
	ck_assert_int_eq(stat(path, &before), 0);

	sb_error err = {0};
	ck_assert_int_eq(sb_st_write(path, e, 2, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "duplicate tensor name 'a'"));

	e[1].name = "b";
	e[1].data = NULL;
	ck_assert_int_eq(sb_st_write(path, e, 2, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'b' has no data"));

	e[1].data = v;
	e[1].ndim = SB_MAX_DIMS + 1;
	ck_assert_int_eq(sb_st_write(path, e, 2, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'b' has an invalid dtype or ndim"));

	e[1].ndim = 2;
	e[1].shape[0] = (uint64_t)1 << 32;
	e[1].shape[1] = (uint64_t)1 << 32;
	ck_assert_int_eq(sb_st_write(path, e, 2, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'b' is too large"));

	e[1].name = "__metadata__";
	ck_assert_int_eq(sb_st_write(path, e, 2, NULL, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "invalid name '__metadata__'"));

	const char *odd_meta[] = {"k", NULL};
	ck_assert_int_eq(sb_st_write(path, e, 1, odd_meta, &err), SB_ERR_ARG);
	ck_assert_ptr_nonnull(strstr(err.msg, "metadata key 'k' has no value"));

	struct stat after;
	ck_assert_int_eq(stat(path, &after), 0);
	ck_assert_uint_eq(after.st_ino, before.st_ino);
	ck_assert_uint_eq(after.st_size, before.st_size);
	ck_assert_uint_eq(count_dir_entries(dir), 1);

	/* A directory that does not exist: an I/O error naming the path. */
	char bad[4300];
	snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", dir);
	ck_assert_int_eq(sb_st_write(bad, e, 1, NULL, &err), SB_ERR_IO);
	ck_assert_ptr_nonnull(strstr(err.msg, "x.safetensors: cannot create a temporary file"));
}
END_TEST

START_TEST(safetensors_reads_official_fixture)
{
	sb_error err = {0};
	sb_st_file *f = sb_st_open(tu_fixture("rotary-softmax/expected.safetensors"), &err);
	ck_assert_msg(f != NULL, "%s", err.msg);
	static const struct {
		const char *name;
		sb_dtype dtype;
		int ndim;
		uint64_t shape[3];
	} want[] = {
		{"tokens", SB_DTYPE_I32, 1, {96}},
		{"logits", SB_DTYPE_F32, 2, {96, 72}},
		{"act", SB_DTYPE_U8, 2, {2, 96}},
		{"router_margin", SB_DTYPE_F32, 2, {2, 96}},
		{"hidden", SB_DTYPE_F32, 3, {2, 96, 64}},
	};
	ck_assert_uint_eq(sb_st_count(f), sizeof want / sizeof want[0]);
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		const sb_tensor *t = sb_st_find(f, want[i].name);
		ck_assert_msg(t != NULL, "no tensor %s", want[i].name);
		ck_assert_int_eq(t->dtype, want[i].dtype);
		ck_assert_int_eq(t->ndim, want[i].ndim);
		for (int d = 0; d < want[i].ndim; d++)
			ck_assert_uint_eq(t->shape[d], want[i].shape[d]);
	}
	/* Token ids index a 72-row vocabulary; act holds 0/1 flags. */
	const sb_tensor *tok = sb_st_find(f, "tokens");
	const int32_t *ids = tok->data;
	for (size_t i = 0; i < tok->numel; i++)
		ck_assert(ids[i] >= 0 && ids[i] < 72);
	const sb_tensor *act = sb_st_find(f, "act");
	const uint8_t *a = act->data;
	for (size_t i = 0; i < act->numel; i++)
		ck_assert(a[i] <= 1);
	sb_st_close(f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("safetensors");
	TCase *tc = tcase_create("safetensors");
	tcase_add_test(tc, safetensors_rejects_truncated_file);
	tcase_add_test(tc, safetensors_rejects_header_past_eof);
	tcase_add_test(tc, safetensors_rejects_header_over_100mb);
	tcase_add_test(tc, safetensors_rejects_non_object_header);
	tcase_add_test(tc, safetensors_rejects_invalid_json);
	tcase_add_test(tc, safetensors_rejects_duplicate_names);
	tcase_add_test(tc, safetensors_rejects_unknown_dtype);
	tcase_add_test(tc, safetensors_rejects_overlapping_offsets);
	tcase_add_test(tc, safetensors_rejects_gapped_offsets);
	tcase_add_test(tc, safetensors_rejects_trailing_bytes);
	tcase_add_test(tc, safetensors_rejects_byte_count_mismatch);
	tcase_add_test(tc, safetensors_rejects_shape_overflow);
	tcase_add_test(tc, safetensors_rejects_bad_shape_entries);
	tcase_add_test(tc, safetensors_rejects_missing_or_extra_fields);
	tcase_add_test(tc, safetensors_rejects_bad_data_offsets);
	tcase_add_test(tc, safetensors_rejects_bad_names_and_metadata);
	tcase_add_test(tc, safetensors_open_reports_io_errors);
	tcase_add_test(tc, safetensors_copies_unaligned_data);
	tcase_add_test(tc, safetensors_accepts_empty_and_zero_sized);
	tcase_add_test(tc, safetensors_write_read_round_trip);
	tcase_add_test(tc, safetensors_write_refuses_bad_entries);
	tcase_add_test(tc, safetensors_reads_official_fixture);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
