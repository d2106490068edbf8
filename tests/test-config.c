/* test-config.c - config.yaml reader and writer. */
#include "testutil.h"

START_TEST(config_enum_names)
{
	ck_assert_str_eq(sb_pos_name(SB_POS_ROTARY), "rotary");
	ck_assert_str_eq(sb_norm_name(SB_NORM_RMSNORM), "rmsnorm");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("config");
	tcase_add_test(tc, config_enum_names);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
