/* report.h - what the measuring commands (bench, perplexity, activations)
 * share: a progress line on a terminal, a monotonic clock, the process's
 * memory, output files that appear whole or not at all, and XML escaping
 * for the SVG and HTML they draw. */
#ifndef SB_CLI_REPORT_H
#define SB_CLI_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "seqboat.h"

/* A one-line progress display on stderr, redrawn in place at most ten
 * times a second, and only when stderr is a terminal (so logs and pipes
 * never see it). */
typedef struct cli_progress {
	bool on;
	bool drawn;              /* a line is on screen and must be cleared */
	uint64_t t_start_ns;
	uint64_t t_last_ns;
} cli_progress;

void cli_progress_start(cli_progress *p);
/* Redraws "label: done/total unit (pct%, rate unit/s) extra" if 100 ms
 * passed since the last redraw. extra may be NULL. */
void cli_progress_update(cli_progress *p, const char *label, uint64_t done,
                         uint64_t total, const char *unit, const char *extra);
/* Redraws a free-form line (a phase without a known total, such as
 * "tokenizing 10.0 MiB (4 s)") at most ten times a second. */
void cli_progress_note(cli_progress *p, const char *text);
/* Seconds since cli_progress_start. */
double cli_progress_seconds(const cli_progress *p);
/* Clears the line (call before printing anything else). */
void cli_progress_clear(cli_progress *p);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t cli_clock_ns(void);

/* Resident memory of this process, bytes: now (VmRSS) and the highest it
 * has been since the process started (VmHWM, else getrusage's ru_maxrss).
 * 0 if unknown. */
size_t cli_rss_bytes(void);
size_t cli_peak_rss_bytes(void);

/* An output file written to a temporary name next to `path` and renamed
 * over it on commit, so a reader never sees half a file; "-" is stdout.
 * The target is checked as sb_file_out_open does (a symbolic link is
 * followed to its regular file, a FIFO, device or directory refused). */
typedef struct cli_outfile {
	FILE *f;                 /* write here: stdout or file.f */
	sb_file_out file;        /* zero for stdout */
} cli_outfile;

/* Prints the error and returns an exit status, or 0. */
int cli_outfile_open(cli_outfile *o, const char *path);
/* Flushes, syncs and renames; on a write error removes the temporary file.
 * Prints the error and returns an exit status, or 0. */
int cli_outfile_commit(cli_outfile *o);
/* Removes the temporary file (after an error elsewhere). Accepts an
 * outfile that was never opened if it was zeroed. */
void cli_outfile_abort(cli_outfile *o);

/* Writes len bytes of s with &, <, >, " and ' escaped for XML and HTML
 * text and attribute values. What XML 1.0 forbids (C0 controls other
 * than tab, newline and carriage return, U+FFFE, U+FFFF) and bytes that
 * are not well-formed UTF-8 are written as U+FFFD, one per byte. */
void cli_xml_escape(FILE *f, const char *s, size_t len);

#endif
