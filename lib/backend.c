/*
 * backend.c - the backends built in, found by a device string.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

/* Every backend of this build. A new backend adds its line here (under
 * its meson option) and its own files. */
static const sb_backend *const backends[] = {
	&sb_backend_cpu,
#ifdef SB_HAVE_CUDA
	&sb_backend_cuda,
#endif
};

const sb_backend *sb_backend_find(const char *device, int *index, sb_error *err)
{
	*index = 0;
	if (!device || !*device)
		return &sb_backend_cpu;
	const char *colon = strchr(device, ':');
	size_t n = colon ? (size_t)(colon - device) : strlen(device);
	if (colon) {
		char *end;
		long v = strtol(colon + 1, &end, 10);
		if (!colon[1] || *end || v < 0 || v > 1024 || colon[1] == '-' || colon[1] == '+')
			return sb_error_set(err, SB_ERR_ARG,
			                    "device '%s': expected NAME or NAME:INDEX (e.g. cpu, cuda:0)",
			                    device), NULL;
		*index = (int)v;
	}
	for (size_t i = 0; i < sizeof backends / sizeof *backends; i++)
		if (strlen(backends[i]->name) == n && !strncmp(backends[i]->name, device, n))
			return backends[i];
	char names[128] = "";
	for (size_t i = 0; i < sizeof backends / sizeof *backends; i++) {
		if (i)
			strncat(names, ", ", sizeof names - strlen(names) - 1);
		strncat(names, backends[i]->name, sizeof names - strlen(names) - 1);
	}
	sb_error_set(err, SB_ERR_UNSUPPORTED, "device '%s': no such backend in this build (have: %s)",
	             device, names);
	return NULL;
}

void sb_backend_device_name(const sb_backend *be, int device, char *buf, size_t cap)
{
	if (be == &sb_backend_cpu)
		snprintf(buf, cap, "%s", be->name);
	else
		snprintf(buf, cap, "%s:%d", be->name, device);
}
