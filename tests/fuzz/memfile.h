/*
 * memfile.h - a path for bytes in memory, for the readers that take a file
 * name (the tokenizer): a memfd, named through /proc/self/fd.
 */
#ifndef SB_FUZZ_MEMFILE_H
#define SB_FUZZ_MEMFILE_H

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* Writes data to a fresh memfd and puts its path in path; returns the fd
 * (close it when done) or -1. */
static inline int memfile(const uint8_t *data, size_t size, char *path, size_t path_size)
{
	int fd = memfd_create("fuzz", MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t done = 0;
	while (done < size) {
		ssize_t w = write(fd, data + done, size - done);
		if (w <= 0) {
			close(fd);
			return -1;
		}
		done += (size_t)w;
	}
	snprintf(path, path_size, "/proc/self/fd/%d", fd);
	return fd;
}

#endif
