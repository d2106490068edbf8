// spm_shim.cc - SentencePiece behind a C interface (see spm_shim.h). Every
// entry point catches all exceptions; util::Status becomes an sb_error.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

#include "spm_shim.h"

// The largest tokenizer.model read (real ones are a few MB).
#define SB_SPM_FILE_MAX (static_cast<size_t>(64) << 20)

struct sb_spm {
	sentencepiece::SentencePieceProcessor proc;
	std::string path;
	sb_spm_decode_opts opts;
	std::string unk_surface;
};

namespace {

int status_error(const sentencepiece::util::Status &st, const std::string &label,
                 int code, sb_error *err)
{
	return sb_error_set(err, code, "%s: %s", label.c_str(), st.ToString().c_str());
}

// The protobuf wire format, just enough to read the few scalar fields of
// ModelProto that the public processor API does not expose.
struct Wire {
	const unsigned char *p, *end;

	bool varint(uint64_t *v)
	{
		uint64_t x = 0;
		for (int shift = 0; shift < 64 && p < end; shift += 7) {
			unsigned char b = *p++;
			x |= static_cast<uint64_t>(b & 0x7F) << shift;
			if (!(b & 0x80)) {
				*v = x;
				return true;
			}
		}
		return false;
	}

	// Next field: number, wire type and, for length-delimited ones, the
	// bytes. False at the end or on malformed input.
	bool next(uint32_t *field, uint32_t *type, uint64_t *value,
	          const unsigned char **data, size_t *len)
	{
		uint64_t key;
		if (p >= end || !varint(&key))
			return false;
		*field = static_cast<uint32_t>(key >> 3);
		*type = static_cast<uint32_t>(key & 7);
		switch (*type) {
		case 0:
			return varint(value);
		case 1:
			if (end - p < 8) return false;
			p += 8;
			return true;
		case 5:
			if (end - p < 4) return false;
			p += 4;
			return true;
		case 2: {
			uint64_t n;
			if (!varint(&n) || n > static_cast<uint64_t>(end - p))
				return false;
			*data = p;
			*len = static_cast<size_t>(n);
			p += n;
			return true;
		}
		default:
			return false;
		}
	}
};

// Reads ModelProto.trainer_spec (2).unk_surface (44) and normalizer_spec
// (3) add_dummy_prefix (3) / remove_extra_whitespaces (4), with the
// proto's defaults for absent fields.
void read_decode_opts(const std::string &proto, sb_spm *s)
{
	s->unk_surface = " \xE2\x81\x87 ";
	s->opts.add_dummy_prefix = true;
	s->opts.remove_extra_whitespaces = true;
	Wire top{reinterpret_cast<const unsigned char *>(proto.data()),
	         reinterpret_cast<const unsigned char *>(proto.data()) + proto.size()};
	uint32_t f, t;
	uint64_t v;
	const unsigned char *d = nullptr;
	size_t n = 0;
	while (top.next(&f, &t, &v, &d, &n)) {
		if (t != 2 || (f != 2 && f != 3))
			continue;
		Wire sub{d, d + n};
		uint32_t sf, st;
		uint64_t sv = 0;
		const unsigned char *sd = nullptr;
		size_t sn = 0;
		while (sub.next(&sf, &st, &sv, &sd, &sn)) {
			if (f == 2 && sf == 44 && st == 2)
				s->unk_surface.assign(reinterpret_cast<const char *>(sd), sn);
			else if (f == 3 && sf == 3 && st == 0)
				s->opts.add_dummy_prefix = sv != 0;
			else if (f == 3 && sf == 4 && st == 0)
				s->opts.remove_extra_whitespaces = sv != 0;
		}
	}
	s->opts.unk_surface = s->unk_surface.c_str();
}

// The precompiled_charsmap of a NormalizerSpec (SentencePiece 0.1.97):
// a uint32 little-endian byte count of a double-array trie (darts-clone
// units of 32 bits), the trie, then the normalized strings, each ending in
// NUL. SentencePiece's normalizer follows the trie without bounds checks
// and reads a C string at whatever offset a leaf holds, so a malformed
// blob crashes it. Every trie position reachable from the root by any
// input bytes is visited here (each at most once): all 256 children of
// each must lie inside the trie, every leaf's value unit too, and every
// value must start a NUL-terminated string inside the string area.
// Returns nullptr when the blob is well-formed, else what is wrong.
const char *check_charsmap(const unsigned char *blob, size_t len)
{
	if (len <= 4)
		return "the blob is shorter than its trie size field";
	uint64_t trie_bytes = static_cast<uint64_t>(blob[0]) | static_cast<uint64_t>(blob[1]) << 8 |
	                      static_cast<uint64_t>(blob[2]) << 16 | static_cast<uint64_t>(blob[3]) << 24;
	if (trie_bytes >= len)
		return "the trie size exceeds the blob";
	if (trie_bytes > len - 4)
		return "the trie size exceeds the blob";
	const unsigned char *trie = blob + 4;
	const size_t n = static_cast<size_t>(trie_bytes) / 4;
	const unsigned char *strings = trie + trie_bytes;
	const size_t n_strings = len - 4 - static_cast<size_t>(trie_bytes);
	if (n == 0)
		return "the trie is empty";
	auto unit = [trie](size_t i) {
		const unsigned char *p = trie + 4 * i;
		return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
		       static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
	};
	// darts-clone's unit fields.
	auto offset = [](uint32_t u) -> size_t { return (u >> 10) << ((u & (1u << 9)) >> 6); };
	auto label = [](uint32_t u) { return u & ((1u << 31) | 0xFFu); };
	auto has_leaf = [](uint32_t u) { return ((u >> 8) & 1) == 1; };
	auto value = [](uint32_t u) -> size_t { return u & ((1u << 31) - 1); };
	// nul_at[i]: whether a NUL follows position i of the strings (scanned
	// once from the end).
	std::vector<bool> terminated(n_strings, false);
	for (size_t i = n_strings, seen = 0; i-- > 0;) {
		if (strings[i] == 0)
			seen = 1;
		terminated[i] = seen != 0;
	}
	std::vector<bool> visited(n, false);
	std::vector<size_t> todo;
	size_t root = offset(unit(0));   // 0 ^ offset
	todo.push_back(root);
	while (!todo.empty()) {
		size_t pos = todo.back();
		todo.pop_back();
		if (pos >= n || (pos | 0xFF) >= n)
			return "a trie node's children lie outside the trie";
		if (visited[pos])
			continue;
		visited[pos] = true;
		for (size_t c = 0; c < 256; c++) {
			size_t child = pos ^ c;
			uint32_t u = unit(child);
			if (label(u) != c)
				continue;
			size_t next = child ^ offset(u);
			if (has_leaf(u)) {
				if (next >= n)
					return "a trie leaf lies outside the trie";
				size_t v = value(unit(next));
				if (v >= n_strings || !terminated[v])
					return "a trie value points outside the normalized strings or at one without its NUL";
			}
			if (next < n && visited[next])
				continue;
			todo.push_back(next);
		}
	}
	return nullptr;
}

// Walks ModelProto far enough to check every precompiled_charsmap of its
// normalizer_spec (3) and denormalizer_spec (5), each occurrence (a
// message field given twice is merged, a bytes field's last value wins).
// Returns 0, or fills err.
int check_model_proto(const unsigned char *data, size_t len, const char *path, sb_error *err)
{
	Wire top{data, data + len};
	uint32_t f, t;
	uint64_t v;
	const unsigned char *d = nullptr;
	size_t n = 0;
	size_t pieces = 0;
	while (top.p < top.end) {
		if (!top.next(&f, &t, &v, &d, &n))
			return sb_error_set(err, SB_ERR_FORMAT,
			                    "%s: not a SentencePiece model (protobuf parse failed)", path);
		if (f == 1 && t == 2)
			pieces++;
		if (t != 2 || (f != 3 && f != 5))
			continue;
		Wire sub{d, d + n};
		uint32_t sf, st;
		uint64_t sv = 0;
		const unsigned char *sd = nullptr;
		size_t sn = 0;
		while (sub.p < sub.end) {
			if (!sub.next(&sf, &st, &sv, &sd, &sn))
				return sb_error_set(err, SB_ERR_FORMAT,
				                    "%s: not a SentencePiece model (protobuf parse failed in %s)",
				                    path, f == 3 ? "normalizer_spec" : "denormalizer_spec");
			if (sf != 2 || st != 2 || sn == 0)
				continue;
			if (const char *why = check_charsmap(sd, sn))
				return sb_error_set(err, SB_ERR_FORMAT,
				                    "%s: %s.precompiled_charsmap is malformed: %s", path,
				                    f == 3 ? "normalizer_spec" : "denormalizer_spec", why);
		}
	}
	if (pieces == 0)
		return sb_error_set(err, SB_ERR_FORMAT, "%s: not a SentencePiece model (no pieces)", path);
	return 0;
}

// SentencePiece's messages start with its source location
// ("./src/x.cc(12) [cond] "): what the user gets is the text after it.
std::string plain_message(const sentencepiece::util::Status &st)
{
	std::string m = st.error_message() ? st.error_message() : "";
	if (m.rfind("./src/", 0) == 0 || m.rfind("src/", 0) == 0) {
		size_t close = m.find("] ");
		if (close != std::string::npos)
			m = m.substr(close + 2);
		else if ((close = m.find(") ")) != std::string::npos)
			m = m.substr(close + 2);
	}
	return m;
}

} // namespace

extern "C" {

sb_spm *sb_spm_load(const char *path, sb_error *err)
{
	try {
		std::unique_ptr<sb_spm> s(new sb_spm());
		s->path = path;
		// Read here, with a limit, and checked before SentencePiece sees it.
		char *buf = nullptr;
		size_t len = 0;
		if (sb_file_read(path, SB_SPM_FILE_MAX, "a SentencePiece model", &buf, &len, err))
			return nullptr;
		std::unique_ptr<char, void (*)(void *)> hold(buf, std::free);
		if (check_model_proto(reinterpret_cast<const unsigned char *>(buf), len, path, err))
			return nullptr;
		auto st = s->proc.LoadFromSerializedProto(absl::string_view(buf, len));
		if (!st.ok()) {
			std::string m = plain_message(st);
			if (m.find("ParseFromArray") != std::string::npos || m.empty())
				sb_error_set(err, SB_ERR_FORMAT,
				             "%s: not a SentencePiece model (protobuf parse failed)", path);
			else
				sb_error_set(err, SB_ERR_FORMAT, "%s: not a usable SentencePiece model: %s",
				             path, m.c_str());
			return nullptr;
		}
		if (s->proc.GetPieceSize() <= 0) {
			sb_error_set(err, SB_ERR_FORMAT, "%s: the model has no pieces", path);
			return nullptr;
		}
		read_decode_opts(s->proc.serialized_model_proto(), s.get());
		return s.release();
	} catch (const std::bad_alloc &) {
		sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory loading the SentencePiece model", path);
	} catch (const std::exception &e) {
		sb_error_set(err, SB_ERR_FORMAT, "%s: %s", path, e.what());
	} catch (...) {
		sb_error_set(err, SB_ERR_FORMAT, "%s: SentencePiece failed to load the model", path);
	}
	return nullptr;
}

void sb_spm_free(sb_spm *s)
{
	delete s;
}

// These accessors call methods that do not throw on a loaded processor;
// the guards keep that promise from leaking C++ semantics into C anyway.
int sb_spm_size(const sb_spm *s)
{
	try { return s->proc.GetPieceSize(); } catch (...) { return 0; }
}

int sb_spm_bos(const sb_spm *s)
{
	try { return s->proc.bos_id(); } catch (...) { return -1; }
}

int sb_spm_eos(const sb_spm *s)
{
	try { return s->proc.eos_id(); } catch (...) { return -1; }
}

int sb_spm_pad(const sb_spm *s)
{
	try { return s->proc.pad_id(); } catch (...) { return -1; }
}

int sb_spm_unk(const sb_spm *s)
{
	try { return s->proc.unk_id(); } catch (...) { return -1; }
}

const char *sb_spm_piece(const sb_spm *s, int id)
{
	try { return s->proc.IdToPiece(id).c_str(); } catch (...) { return ""; }
}

sb_spm_type sb_spm_type_of(const sb_spm *s, int id)
{
	try {
		if (s->proc.IsControl(id))
			return SB_SPM_CONTROL;
		if (s->proc.IsUnknown(id))
			return SB_SPM_UNKNOWN;
		if (s->proc.IsByte(id))
			return SB_SPM_BYTE;
	} catch (...) {
	}
	return SB_SPM_NORMAL;
}

void sb_spm_decode_options(const sb_spm *s, sb_spm_decode_opts *o)
{
	*o = s->opts;
}

int sb_spm_encode(const sb_spm *s, const char *text, size_t len,
                  size_t reserve, int32_t **ids, size_t *n, sb_error *err)
{
	try {
		std::vector<int> v;
		auto st = s->proc.Encode(absl::string_view(text, len), &v);
		if (!st.ok())
			return status_error(st, s->path, SB_ERR_FORMAT, err);
		size_t total;
		if (!sb_size_add(v.size(), reserve, &total) ||
		    !sb_size_add(total, 1, &total) ||
		    !sb_size_mul(total, sizeof(int32_t), &total))
			return sb_error_set(err, SB_ERR_NOMEM, "%s: encoded text too long", s->path.c_str());
		int32_t *out = static_cast<int32_t *>(std::malloc(total));
		if (!out)
			return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory encoding text", s->path.c_str());
		for (size_t i = 0; i < v.size(); i++)
			out[reserve + i] = v[i];
		*ids = out;
		*n = v.size();
		return 0;
	} catch (const std::bad_alloc &) {
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory encoding text", s->path.c_str());
	} catch (const std::exception &e) {
		return sb_error_set(err, SB_ERR_FORMAT, "%s: %s", s->path.c_str(), e.what());
	} catch (...) {
		return sb_error_set(err, SB_ERR_FORMAT, "%s: SentencePiece failed to encode", s->path.c_str());
	}
}

int sb_spm_decode(const sb_spm *s, const int32_t *ids, size_t n, char **text,
                  size_t *len, sb_error *err)
{
	try {
		std::vector<int> v(ids, ids + n);
		std::string out;
		auto st = s->proc.Decode(v, &out);
		if (!st.ok())
			return status_error(st, s->path, SB_ERR_ARG, err);
		char *p = static_cast<char *>(std::malloc(out.size() + 1));
		if (!p)
			return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory decoding ids", s->path.c_str());
		std::memcpy(p, out.data(), out.size());
		p[out.size()] = 0;
		*text = p;
		*len = out.size();
		return 0;
	} catch (const std::bad_alloc &) {
		return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory decoding ids", s->path.c_str());
	} catch (const std::exception &e) {
		return sb_error_set(err, SB_ERR_FORMAT, "%s: %s", s->path.c_str(), e.what());
	} catch (...) {
		return sb_error_set(err, SB_ERR_FORMAT, "%s: SentencePiece failed to decode", s->path.c_str());
	}
}

} // extern "C"
