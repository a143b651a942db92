// Our own reader and writer of the public safetensors format: an 8-byte little-endian header
// length, a JSON header {"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}},
// then raw little-endian tensor data (offsets relative to the end of the header).
// Reading is bounds-checked throughout: a truncated or malformed file is a c10::Error naming
// the problem, never a crash or an allocation beyond the file's own size.
// Stateless functions; thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <map>
#include <string>

namespace hvlm {

// The largest JSON header we accept; real headers are a few hundred bytes per tensor.
constexpr size_t kMaxSafetensorsHeaderBytes = 64u << 20;

struct SafetensorsContents {
  std::map<std::string, at::Tensor> tensors;      // CPU tensors owning their data
  std::map<std::string, std::string> metadata;    // the __metadata__ map, if any
};

// Parses an in-memory file; `source` names it in error messages. A header longer than
// `max_header_bytes` is refused before it is parsed.
SafetensorsContents parse_safetensors(const void* data, size_t size, const std::string& source,
                                      size_t max_header_bytes = kMaxSafetensorsHeaderBytes);

// Reads and parses a file.
SafetensorsContents read_safetensors(const std::string& path);

// Serialises tensors (any device, made contiguous on CPU) with optional metadata; names are
// written in sorted order with contiguous data.
std::string serialize_safetensors(const std::map<std::string, at::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

// Writes serialize_safetensors(...) to `path` (via a temporary file and rename).
void write_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace hvlm
