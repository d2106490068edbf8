/* test-util.c - overflow-checked sizes, errors, dtype table. */
#include <stdint.h>
#include <string.h>

#include "testutil.h"

START_TEST(util_size_mul_detects_overflow)
{
	size_t out;
	ck_assert(sb_size_mul(3, 5, &out));
	ck_assert_uint_eq(out, 15);
	ck_assert(!sb_size_mul(SIZE_MAX / 2 + 1, 2, &out));
	ck_assert(!sb_size_mul((size_t)1 << 32, (size_t)1 << 32, &out));
	ck_assert(!sb_size_add(SIZE_MAX, 1, &out));
	ck_assert(sb_size_add(SIZE_MAX - 1, 1, &out));
	ck_assert_uint_eq(out, SIZE_MAX);
}
END_TEST

START_TEST(util_error_set_and_prefix)
{
	sb_error e;
	int rc = sb_error_set(&e, SB_ERR_FORMAT, "tensor '%s' missing", "x");
	ck_assert_int_eq(rc, SB_ERR_FORMAT);
	ck_assert_int_eq(e.code, SB_ERR_FORMAT);
	sb_error_prefix(&e, "model.safetensors");
	ck_assert_str_eq(e.msg, "model.safetensors: tensor 'x' missing");
	ck_assert_int_eq(sb_error_set(NULL, SB_ERR_IO, "ignored"), SB_ERR_IO);
}
END_TEST

START_TEST(util_dtype_table)
{
	ck_assert_uint_eq(sb_dtype_size(SB_DTYPE_BF16), 2);
	ck_assert_uint_eq(sb_dtype_size(SB_DTYPE_F64), 8);
	ck_assert_str_eq(sb_dtype_name(SB_DTYPE_U8), "U8");
	ck_assert_uint_eq(sb_dtype_size((sb_dtype)99), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("util");
	tcase_add_test(tc, util_size_mul_detects_overflow);
	tcase_add_test(tc, util_error_set_and_prefix);
	tcase_add_test(tc, util_dtype_table);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
