#include "client/npy.h"

#include "client/half_precision.h"
#include "client/little_endian.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

namespace hvlm::client {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;
// Magic, major and minor version, then the header length: 2 bytes (1.0) or 4 bytes (2.0).
constexpr size_t kPreambleBytesV1 = kMagicBytes + 2 + 2;
constexpr size_t kPreambleBytesV2 = kMagicBytes + 2 + 4;
// numpy aligns the start of the data to this many bytes.
constexpr size_t kDataAlignment = 64;

size_t element_bytes(NpyDtype dtype) { return dtype == NpyDtype::kFloat32 ? 4 : 2; }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  if (shape.size() == 1) text += ",";
  return text + ")";
}

// A printable, bounded excerpt of header text for error messages.
std::string excerpt(const std::string& text) {
  constexpr size_t kMaxChars = 120;
  std::string out;
  for (size_t i = 0; i < text.size() && i < kMaxChars; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    }
  }
  if (text.size() > kMaxChars) out += "...";
  return out;
}

// The header dict: exactly the keys descr, fortran_order and shape, in any order.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

// A recursive-descent parser of the Python literal subset numpy writes: a dict of string
// keys, string / True / False / tuple-of-int values, optional trailing commas.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& source)
      : text_(text), source_(source) {}

  NpyHeader parse() {
    NpyHeader header;
    bool seen_descr = false, seen_fortran = false, seen_shape = false;
    skip_space();
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const size_t key_pos = pos_;
      const std::string key = parse_string();
      skip_space();
      expect(':');
      skip_space();
      auto mark_seen = [&](bool& seen) {
        if (seen) fail_at(key_pos, "key '" + key + "' appears twice");
        seen = true;
      };
      if (key == "descr") {
        mark_seen(seen_descr);
        if (peek() != '\'' && peek() != '"') {
          fail("descr must be a string such as '<f4' (structured dtypes are not supported)");
        }
        header.descr = parse_string();
      } else if (key == "fortran_order") {
        mark_seen(seen_fortran);
        header.fortran_order = parse_bool();
      } else if (key == "shape") {
        mark_seen(seen_shape);
        header.shape = parse_shape();
      } else {
        fail_at(key_pos, "unexpected key '" + key + "' (expected descr, fortran_order, shape)");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') fail("expected ',' or '}'");
    }
    ++pos_;  // the closing brace
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
    if (!seen_descr) fail_at(0, "key 'descr' is missing");
    if (!seen_fortran) fail_at(0, "key 'fortran_order' is missing");
    if (!seen_shape) fail_at(0, "key 'shape' is missing");
    return header;
  }

 private:
  [[noreturn]] void fail_at(size_t pos, const std::string& problem) const {
    throw NpyError(source_ + ": malformed .npy header at character " + std::to_string(pos) +
                   ": " + problem + " (header: " + excerpt(text_) + ")");
  }
  [[noreturn]] void fail(const std::string& problem) const { fail_at(pos_, problem); }

  // The current character, or '\0' at the end (the header never legitimately holds '\0').
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
            text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  std::string parse_string() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    const size_t start = ++pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') fail("escapes in strings are not supported");
      ++pos_;
    }
    if (pos_ == text_.size()) fail_at(start - 1, "unterminated string");
    return text_.substr(start, pos_++ - start);
  }

  bool parse_bool() {
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("fortran_order must be True or False");
  }

  // A non-negative Python int, optionally with Python 2's 'L' suffix.
  int64_t parse_dimension() {
    if (peek() == '-') fail("shape dimensions must be non-negative");
    if (peek() < '0' || peek() > '9') fail("expected an integer dimension");
    int64_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      const int digit = peek() - '0';
      if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) {
        fail("shape dimension does not fit in int64");
      }
      value = value * 10 + digit;
      ++pos_;
    }
    if (peek() == 'L') ++pos_;
    return value;
  }

  // A tuple: "()", "(N,)", "(N, M)" or "(N, M,)"; "(N)" is an int in Python, not a tuple.
  std::vector<int64_t> parse_shape() {
    if (peek() != '(') fail("shape must be a tuple such as (N, D)");
    ++pos_;
    std::vector<int64_t> shape;
    bool trailing_comma = false;
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (shape.size() == kMaxNpyDims) {
        fail("shape has more than " + std::to_string(kMaxNpyDims) + " dimensions");
      }
      shape.push_back(parse_dimension());
      skip_space();
      trailing_comma = peek() == ',';
      if (trailing_comma) {
        ++pos_;
      } else if (peek() != ')') {
        fail("expected ',' or ')' in shape");
      }
    }
    if (shape.size() == 1 && !trailing_comma) fail("shape (N) must be written (N,)");
    ++pos_;
    return shape;
  }

  const std::string& text_;
  const std::string& source_;
  size_t pos_ = 0;
};

NpyDtype dtype_from_descr(const std::string& descr, const std::string& source) {
  if (descr == "<f4") return NpyDtype::kFloat32;
  if (descr == "<f2") return NpyDtype::kFloat16;
  std::string hint;
  if (descr == ">f4" || descr == ">f2") hint = " (big-endian data is not supported)";
  throw NpyError(source + ": unsupported dtype '" + excerpt(descr) +
                 "'; expected '<f4' (float32) or '<f2' (float16)" + hint);
}

// The header text (dict, space padding, newline) for a file of the given format version.
std::string header_text(const std::vector<int64_t>& shape, NpyDtype dtype, int major_version) {
  std::string dict = std::string("{'descr': '") + npy_descr(dtype) +
                     "', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  const size_t preamble = major_version == 1 ? kPreambleBytesV1 : kPreambleBytesV2;
  const size_t unpadded = preamble + dict.size() + 1;  // + the final newline
  const size_t padding = (kDataAlignment - unpadded % kDataAlignment) % kDataAlignment;
  return dict + std::string(padding, ' ') + "\n";
}

std::string preamble_and_header(const std::vector<int64_t>& shape, NpyDtype dtype,
                                int major_version) {
  if (major_version != 0 && major_version != 1 && major_version != 2) {
    throw NpyError("npy format version " + std::to_string(major_version) +
                   " is not supported (1 or 2)");
  }
  npy_element_count(shape);  // rejects negative dimensions and overflow
  std::string header = header_text(shape, dtype, major_version == 0 ? 1 : major_version);
  if (major_version == 0) {
    major_version = header.size() <= std::numeric_limits<uint16_t>::max() ? 1 : 2;
    if (major_version == 2) header = header_text(shape, dtype, 2);
  } else if (major_version == 1 && header.size() > std::numeric_limits<uint16_t>::max()) {
    throw NpyError("npy header of " + std::to_string(header.size()) +
                   " bytes does not fit format version 1.0");
  }
  std::string out(kMagic, kMagicBytes);
  out += static_cast<char>(major_version);
  out += '\0';
  unsigned char length[4];
  if (major_version == 1) {
    store_le16(length, static_cast<uint16_t>(header.size()));
    out.append(reinterpret_cast<const char*>(length), 2);
  } else {
    store_le32(length, static_cast<uint32_t>(header.size()));
    out.append(reinterpret_cast<const char*>(length), 4);
  }
  return out + header;
}

// Appends `count` values encoded as `dtype` to `out`.
void append_values(const float* values, size_t count, NpyDtype dtype, std::string& out) {
  const size_t start = out.size();
  out.resize(start + count * element_bytes(dtype));
  unsigned char* p = reinterpret_cast<unsigned char*>(&out[start]);
  if (dtype == NpyDtype::kFloat32) {
    for (size_t i = 0; i < count; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &values[i], sizeof bits);
      store_le32(p + 4 * i, bits);
    }
  } else {
    for (size_t i = 0; i < count; ++i) store_le16(p + 2 * i, float_to_half_bits(values[i]));
  }
}

}  // namespace

const char* npy_descr(NpyDtype dtype) { return dtype == NpyDtype::kFloat32 ? "<f4" : "<f2"; }

int64_t npy_element_count(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  bool has_zero = false;
  for (int64_t dim : shape) {
    if (dim < 0) throw NpyError("shape " + shape_text(shape) + " has a negative dimension");
    if (dim == 0) has_zero = true;
  }
  if (has_zero) return 0;
  for (int64_t dim : shape) {
    if (count > std::numeric_limits<int64_t>::max() / dim) {
      throw NpyError("shape " + shape_text(shape) + " has more elements than int64 can count");
    }
    count *= dim;
  }
  return count;
}

NpyArray parse_npy(const void* data, size_t size, const std::string& source) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  if (size == 0) throw NpyError(source + ": empty file, not a .npy file");
  if (std::memcmp(bytes, kMagic, std::min(size, kMagicBytes)) != 0) {
    throw NpyError(source + ": not a .npy file (bad magic; expected \\x93NUMPY)");
  }
  if (size < kPreambleBytesV1) {
    throw NpyError(source + ": truncated .npy file: " + std::to_string(size) +
                   " bytes, shorter than the preamble");
  }
  const int major = bytes[6], minor = bytes[7];
  if ((major != 1 && major != 2) || minor != 0) {
    throw NpyError(source + ": .npy format version " + std::to_string(major) + "." +
                   std::to_string(minor) + " is not supported (only 1.0 and 2.0)");
  }
  const size_t preamble = major == 1 ? kPreambleBytesV1 : kPreambleBytesV2;
  if (size < preamble) {
    throw NpyError(source + ": truncated .npy file: " + std::to_string(size) +
                   " bytes, shorter than the version " + std::to_string(major) + ".0 preamble");
  }
  const size_t header_bytes = major == 1 ? load_le16(bytes + 8) : load_le32(bytes + 8);
  if (header_bytes > kMaxNpyHeaderBytes) {
    throw NpyError(source + ": .npy header length " + std::to_string(header_bytes) +
                   " exceeds the limit of " + std::to_string(kMaxNpyHeaderBytes) + " bytes");
  }
  if (header_bytes > size - preamble) {
    throw NpyError(source + ": truncated .npy file: the header needs " +
                   std::to_string(header_bytes) + " bytes, only " +
                   std::to_string(size - preamble) + " follow the preamble");
  }
  const std::string text(reinterpret_cast<const char*>(bytes + preamble), header_bytes);
  const NpyHeader header = HeaderParser(text, source).parse();

  NpyArray array;
  array.dtype = dtype_from_descr(header.descr, source);
  if (header.fortran_order) {
    throw NpyError(source + ": fortran_order True is not supported; save the array in C order "
                            "(numpy.ascontiguousarray)");
  }
  array.shape = header.shape;

  // The size check comes before any allocation. The element count is computed with
  // overflow checks (a shape may claim more than 2^64 bytes); any zero dimension makes it 0.
  const size_t data_bytes = size - preamble - header_bytes;
  const size_t item = element_bytes(array.dtype);
  const bool empty = std::find(array.shape.begin(), array.shape.end(), 0) != array.shape.end();
  size_t count = empty ? 0 : 1;
  bool overflow = false;
  for (int64_t dim : array.shape) {
    if (empty) break;
    if (__builtin_mul_overflow(count, static_cast<size_t>(dim), &count)) overflow = true;
  }
  size_t needed = 0;
  if (!overflow && __builtin_mul_overflow(count, item, &needed)) overflow = true;
  if (overflow || needed != data_bytes) {
    throw NpyError(source + ": shape " + shape_text(array.shape) + " of '" + header.descr +
                   "' needs " +
                   (overflow ? "more than 2^64" : std::to_string(needed)) +
                   " data bytes, the file has " + std::to_string(data_bytes) +
                   (overflow || needed > data_bytes ? " (truncated?)" : ""));
  }

  const unsigned char* p = bytes + preamble + header_bytes;
  array.values.resize(count);
  if (array.dtype == NpyDtype::kFloat32) {
    for (size_t i = 0; i < count; ++i) {
      const uint32_t bits = load_le32(p + 4 * i);
      std::memcpy(&array.values[i], &bits, sizeof bits);
    }
  } else {
    for (size_t i = 0; i < count; ++i) array.values[i] = half_bits_to_float(load_le16(p + 2 * i));
  }
  return array;
}

NpyArray read_npy(const std::string& path) {
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  if (error) throw NpyError(path + ": cannot open: " + error.message());
  if (!std::filesystem::is_regular_file(status)) throw NpyError(path + ": not a regular file");
  const auto size = std::filesystem::file_size(path, error);
  if (error) throw NpyError(path + ": cannot read its size: " + error.message());

  std::ifstream in(path, std::ios::binary);
  if (!in) throw NpyError(path + ": cannot open: " + std::strerror(errno));
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (static_cast<size_t>(in.gcount()) != bytes.size()) {
    throw NpyError(path + ": read " + std::to_string(in.gcount()) + " of " +
                   std::to_string(bytes.size()) + " bytes");
  }
  return parse_npy(bytes.data(), bytes.size(), path);
}

std::string serialize_npy(const std::vector<int64_t>& shape, const float* values, NpyDtype dtype,
                          int major_version) {
  std::string out = preamble_and_header(shape, dtype, major_version);
  append_values(values, static_cast<size_t>(npy_element_count(shape)), dtype, out);
  return out;
}

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* values,
               NpyDtype dtype) {
  const std::string head = preamble_and_header(shape, dtype, 0);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw NpyError(path + ": cannot create: " + std::strerror(errno));
  out.write(head.data(), static_cast<std::streamsize>(head.size()));
  // Encode in chunks so the file never needs a second full copy of the array.
  constexpr size_t kChunkElements = 1u << 16;
  const size_t count = static_cast<size_t>(npy_element_count(shape));
  std::string chunk;
  for (size_t start = 0; start < count && out; start += kChunkElements) {
    chunk.clear();
    append_values(values + start, std::min(kChunkElements, count - start), dtype, chunk);
    out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  }
  out.close();
  if (!out) throw NpyError(path + ": write failed: " + std::strerror(errno));
}

}  // namespace hvlm::client
