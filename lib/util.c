/* util.c - errors, overflow-checked sizes, dtype names. */
#include <stdarg.h>
#include <string.h>

#include "seqboat.h"

/* Messages quote names and bytes from untrusted files: a control byte
 * (a newline in a tensor name, an escape sequence) becomes '?', so that a
 * message stays one line and cannot drive the terminal it is printed on. */
static void one_line(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

int sb_error_set(sb_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		one_line(err->msg);
		err->code = code;
	}
	return code;
}

int sb_error_prefix(sb_error *err, const char *prefix)
{
	if (!err)
		return SB_ERR_ARG;
	char tmp[SB_ERROR_MAX];
	memcpy(tmp, err->msg, sizeof tmp);
	size_t n = strlen(prefix);
	if (n > SB_ERROR_MAX - 3)
		n = SB_ERROR_MAX - 3;
	memcpy(err->msg, prefix, n);
	memcpy(err->msg + n, ": ", 2);
	size_t room = SB_ERROR_MAX - n - 2;
	size_t m = strnlen(tmp, room - 1);
	memcpy(err->msg + n + 2, tmp, m);
	err->msg[n + 2 + m] = 0;
	one_line(err->msg);
	return err->code;
}

bool sb_size_mul(size_t a, size_t b, size_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}

bool sb_size_add(size_t a, size_t b, size_t *out)
{
	return !__builtin_add_overflow(a, b, out);
}

static const struct {
	const char *name;
	size_t size;
} dtypes[SB_DTYPE_COUNT] = {
	[SB_DTYPE_F32] = {"F32", 4},  [SB_DTYPE_F16] = {"F16", 2},
	[SB_DTYPE_BF16] = {"BF16", 2}, [SB_DTYPE_F64] = {"F64", 8},
	[SB_DTYPE_I64] = {"I64", 8},  [SB_DTYPE_I32] = {"I32", 4},
	[SB_DTYPE_I16] = {"I16", 2},  [SB_DTYPE_I8] = {"I8", 1},
	[SB_DTYPE_U64] = {"U64", 8},  [SB_DTYPE_U32] = {"U32", 4},
	[SB_DTYPE_U16] = {"U16", 2},  [SB_DTYPE_U8] = {"U8", 1},
	[SB_DTYPE_BOOL] = {"BOOL", 1},
};

size_t sb_dtype_size(sb_dtype dt)
{
	return (unsigned)dt < SB_DTYPE_COUNT ? dtypes[dt].size : 0;
}

const char *sb_dtype_name(sb_dtype dt)
{
	return (unsigned)dt < SB_DTYPE_COUNT ? dtypes[dt].name : "?";
}
