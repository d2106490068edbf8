/* serve_log.c - see serve_log.h. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "serve_log.h"

void serve_log(const char *fmt, ...)
{
	char line[1024], stamp[32];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	/* One fprintf: stdio locks the stream, so lines of threads never mix. */
	fprintf(stderr, "%s.%03ldZ serve: %s\n", stamp, ts.tv_nsec / 1000000, line);
}
