/* serve_log.h - the server's log: one line per event on stderr, with the
 * UTC time, safe to call from any thread. */
#ifndef SB_SERVE_LOG_H
#define SB_SERVE_LOG_H

void serve_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
