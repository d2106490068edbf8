/* report.c - see report.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "report.h"

#define PROGRESS_INTERVAL_NS 100000000ull

uint64_t cli_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void cli_progress_start(cli_progress *p)
{
	p->on = cli_isatty(stderr);
	p->drawn = false;
	p->t_start_ns = cli_clock_ns();
	p->t_last_ns = 0;
}

void cli_progress_update(cli_progress *p, const char *label, uint64_t done,
                         uint64_t total, const char *unit, const char *extra)
{
	if (!p->on)
		return;
	uint64_t now = cli_clock_ns();
	if (p->drawn && now - p->t_last_ns < PROGRESS_INTERVAL_NS && done < total)
		return;
	p->t_last_ns = now;
	double secs = (double)(now - p->t_start_ns) * 1e-9;
	double rate = secs > 0 ? (double)done / secs : 0.0;
	double pct = total ? 100.0 * (double)done / (double)total : 100.0;
	fprintf(stderr, "\r\033[K%s: %llu/%llu %s (%.0f%%, %.0f %s/s)%s%s", label,
	        (unsigned long long)done, (unsigned long long)total, unit, pct, rate, unit,
	        extra ? " " : "", extra ? extra : "");
	fflush(stderr);
	p->drawn = true;
}

void cli_progress_note(cli_progress *p, const char *text)
{
	if (!p->on)
		return;
	uint64_t now = cli_clock_ns();
	if (p->drawn && now - p->t_last_ns < PROGRESS_INTERVAL_NS)
		return;
	p->t_last_ns = now;
	fprintf(stderr, "\r\033[K%s", text);
	fflush(stderr);
	p->drawn = true;
}

double cli_progress_seconds(const cli_progress *p)
{
	return (double)(cli_clock_ns() - p->t_start_ns) * 1e-9;
}

void cli_progress_clear(cli_progress *p)
{
	if (p->on && p->drawn) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
	p->drawn = false;
}

/* A "Key:   1234 kB" line of /proc/self/status, in bytes; 0 if absent. */
static size_t proc_status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return 0;
	char line[256];
	size_t klen = strlen(key), v = 0;
	while (fgets(line, sizeof line, f)) {
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			v = (size_t)strtoull(line + klen + 1, NULL, 10) * 1024;
			break;
		}
	}
	fclose(f);
	return v;
}

size_t cli_rss_bytes(void)
{
	return proc_status_kb("VmRSS");
}

size_t cli_peak_rss_bytes(void)
{
	size_t v = proc_status_kb("VmHWM");
	if (v)
		return v;
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) == 0)
		return (size_t)ru.ru_maxrss * 1024;   /* Linux reports kilobytes */
	return 0;
}

int cli_outfile_open(cli_outfile *o, const char *path)
{
	memset(o, 0, sizeof *o);
	if (!strcmp(path, "-")) {
		o->f = stdout;
		return 0;
	}
	sb_error err = {0};
	if (sb_file_out_open(&o->file, path, &err))
		return cli_fail(&err);
	o->f = o->file.f;
	return 0;
}

int cli_outfile_commit(cli_outfile *o)
{
	if (o->f == stdout) {
		o->f = NULL;
		if (fflush(stdout) != 0 || ferror(stdout)) {
			cli_error("standard output: write error: %s", strerror(errno));
			return CLI_EXIT_IO;
		}
		return 0;
	}
	sb_error err = {0};
	o->f = NULL;
	if (sb_file_out_commit(&o->file, &err))
		return cli_fail(&err);
	return 0;
}

void cli_outfile_abort(cli_outfile *o)
{
	sb_file_out_abort(&o->file);
	memset(o, 0, sizeof *o);
}

/* Length of the well-formed UTF-8 sequence at s (1..4), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
	size_t n;
	uint32_t cp;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff) || cp == 0xfffe || cp == 0xffff)
		return 0;
	return n;
}

void cli_xml_escape(FILE *f, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < len;) {
		unsigned char c = u[i];
		size_t n = utf8_seq(u + i, len - i);
		if (n == 0 || (c < 0x20 && c != '\t' && c != '\n' && c != '\r')) {
			fputs("\xef\xbf\xbd", f);
			i++;
			continue;
		}
		switch (c) {
		case '&': fputs("&amp;", f); break;
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '"': fputs("&quot;", f); break;
		case '\'': fputs("&#39;", f); break;
		default: fwrite(u + i, 1, n, f);
		}
		i += n;
	}
}
