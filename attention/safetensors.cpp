#include "attention/safetensors.h"

#include "attention/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <utility>
#include <vector>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; big-endian hosts would need byte swapping");

namespace hvlm {
namespace {

using nlohmann::json;

struct DtypeName {
  const char* name;
  at::ScalarType type;
};

constexpr DtypeName kDtypes[] = {
    {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"F64", at::kDouble},
    {"I64", at::kLong},  {"I32", at::kInt},  {"I16", at::kShort},     {"I8", at::kChar},
    {"U8", at::kByte},   {"BOOL", at::kBool},
};

bool dtype_from_name(const std::string& name, at::ScalarType* out) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      *out = d.type;
      return true;
    }
  }
  return false;
}

const char* dtype_name(at::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d.name;
  }
  TORCH_CHECK(false, "safetensors: cannot store dtype ", c10::toString(type));
}

bool is_non_negative_int(const json& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
}

struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

// A short description of an untrusted JSON value for an error message: never dump() it, which
// recurses once per nesting level.
std::string describe(const json& v) {
  if (v.is_string()) {
    const std::string text = v.get<std::string>();
    return "\"" + (text.size() <= 32 ? text : text.substr(0, 32) + "...") + "\"";
  }
  if (v.is_number() || v.is_boolean() || v.is_null()) return v.dump();
  return std::string("a JSON ") + v.type_name();
}

// The deepest nesting a header may have: {"name": {"shape": [...]}} is 3.
constexpr int kMaxHeaderDepth = 8;
// The most dimensions a tensor may have.
constexpr size_t kMaxRank = 16;

Entry parse_entry(const std::string& name, const json& e, uint64_t data_size,
                  const std::string& source) {
  const std::string where = source + ": tensor '" + name + "'";
  TORCH_CHECK(e.is_object(), where, " must be an object with dtype, shape and data_offsets");
  for (const auto& item : e.items()) {
    TORCH_CHECK(item.key() == "dtype" || item.key() == "shape" || item.key() == "data_offsets",
                where, " has an unknown field '", item.key(), "'");
  }
  Entry out{name, at::kFloat, {}, 0, 0};
  TORCH_CHECK(e.contains("dtype") && e.at("dtype").is_string() &&
                  dtype_from_name(e.at("dtype").get<std::string>(), &out.dtype),
              where, " has a missing or unsupported dtype ",
              e.contains("dtype") ? describe(e.at("dtype")) : std::string("(none)"),
              " (supported: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
  TORCH_CHECK(e.contains("shape") && e.at("shape").is_array(), where,
              " must have a shape array");
  TORCH_CHECK(e.at("shape").size() <= kMaxRank, where, " has ", e.at("shape").size(),
              " dimensions, more than ", kMaxRank);
  uint64_t numel = 1;
  uint64_t nonzero_product = 1;  // bounded too: LibTorch computes strides from it
  for (const auto& d : e.at("shape")) {
    TORCH_CHECK(is_non_negative_int(d) && d.get<uint64_t>() <= (uint64_t{1} << 62), where,
                " has an invalid dimension ", describe(d), " in its shape");
    const uint64_t dim = d.get<uint64_t>();
    if (dim > 0) {
      TORCH_CHECK(nonzero_product <= std::numeric_limits<uint64_t>::max() / 8 / dim, where,
                  " has a shape whose size overflows");
      nonzero_product *= dim;
    }
    numel *= dim;
    out.shape.push_back(static_cast<int64_t>(dim));
  }
  const auto& offsets = e.contains("data_offsets") ? e.at("data_offsets") : json();
  TORCH_CHECK(offsets.is_array() && offsets.size() == 2 && is_non_negative_int(offsets[0]) &&
                  is_non_negative_int(offsets[1]),
              where, " must have data_offsets [begin, end]");
  out.begin = offsets[0].get<uint64_t>();
  out.end = offsets[1].get<uint64_t>();
  TORCH_CHECK(out.begin <= out.end && out.end <= data_size, where, " has data_offsets [",
              out.begin, ", ", out.end, "] outside the data section of ", data_size,
              " bytes (truncated file?)");
  const uint64_t expected = numel * c10::elementSize(out.dtype);
  TORCH_CHECK(out.end - out.begin == expected, where, " has ", out.end - out.begin,
              " bytes of data, but dtype ", e.at("dtype").get<std::string>(), " and shape ",
              shape_string(out.shape), " need ", expected);
  return out;
}

}  // namespace

SafetensorsContents parse_safetensors(const void* data, size_t size, const std::string& source,
                                      size_t max_header_bytes) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  TORCH_CHECK(size >= 8, source, ": not a safetensors file (", size,
              " bytes, shorter than the 8-byte header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  TORCH_CHECK(header_len <= max_header_bytes, source, ": header length ", header_len,
              " exceeds the limit of ", max_header_bytes, " bytes (corrupt file?)");
  TORCH_CHECK(header_len <= size - 8, source, ": header length ", header_len,
              " runs past the end of the file (", size, " bytes; truncated?)");
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  bool too_deep = false;
  const json::parser_callback_t depth_guard = [&too_deep](int depth, json::parse_event_t, json&) {
    if (depth > kMaxHeaderDepth) too_deep = true;
    return !too_deep;  // once too deep, keep nothing
  };
  json header = json::parse(header_begin, header_begin + header_len, depth_guard,
                            /*allow_exceptions=*/false);
  TORCH_CHECK(!too_deep, source, ": the header nests deeper than ", kMaxHeaderDepth, " levels");
  TORCH_CHECK(!header.is_discarded() && header.is_object(), source,
              ": the header is not a valid JSON object");
  const uint64_t data_size = size - 8 - header_len;
  const unsigned char* payload = bytes + 8 + header_len;

  SafetensorsContents out;
  std::vector<Entry> entries;
  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") {
      TORCH_CHECK(item.value().is_object(), source, ": __metadata__ must be an object");
      for (const auto& m : item.value().items()) {
        TORCH_CHECK(m.value().is_string(), source, ": __metadata__ value of '", m.key(),
                    "' must be a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(item.key(), item.value(), data_size, source));
  }
  // Tensors must not share bytes (an empty tensor occupies none, wherever its offsets point).
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) {
    if (e.end > e.begin) by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    TORCH_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, source, ": tensors '",
                by_offset[i - 1]->name, "' and '", by_offset[i]->name, "' overlap");
  }
  for (const auto& e : entries) {
    auto t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), payload + e.begin, e.end - e.begin);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

SafetensorsContents read_safetensors(const std::string& path) {
  std::error_code ec;
  TORCH_CHECK(std::filesystem::is_regular_file(path, ec), "cannot open weights file '", path,
              "': it does not exist or is not a regular file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  TORCH_CHECK(in, "cannot open weights file '", path, "'");
  const std::streamoff size = in.tellg();
  TORCH_CHECK(size >= 0, "cannot read weights file '", path, "'");
  std::vector<char> buffer(static_cast<size_t>(size));
  in.seekg(0);
  TORCH_CHECK(in.read(buffer.data(), size), "cannot read weights file '", path, "'");
  return parse_safetensors(buffer.data(), buffer.size(), path);
}

std::string serialize_safetensors(const std::map<std::string, at::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> ordered;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(name != "__metadata__", "safetensors: '__metadata__' is not a tensor name");
    auto t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t nbytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    ordered.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  std::string out(8, '\0');
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out += text;
  out.reserve(out.size() + offset);
  for (const auto& t : ordered) {
    out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  }
  return out;
}

void write_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string bytes = serialize_safetensors(tensors, metadata);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out, "cannot write '", tmp, "'");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    TORCH_CHECK(out.flush(), "cannot write '", tmp, "'");
  }
  TORCH_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '",
              path, "'");
}

}  // namespace hvlm
