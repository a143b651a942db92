// Reader and writer of numpy's .npy format (format versions 1.0 and 2.0): the magic
// "\x93NUMPY", a version, a little-endian header length, a Python-literal header
// {'descr': '<f4', 'fortran_order': False, 'shape': (N, D), } padded with spaces to a
// 64-byte boundary, then the raw elements. Only little-endian float32 ('<f4') and float16
// ('<f2') arrays in C order are supported; anything else is a clear NpyError.
// Reading is bounds-checked throughout: a truncated or malformed file is an NpyError naming
// the file and the problem, never a crash, and nothing is allocated from what the header
// claims before the claim is checked against the file's size (the float values of a '<f2'
// file take twice its data bytes).
// Stateless functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace hvlm::client {

// Element types this reader and writer handle.
enum class NpyDtype {
  kFloat32,  // '<f4', IEEE binary32
  kFloat16,  // '<f2', IEEE binary16
};

// The numpy descr string of a dtype: "<f4" or "<f2".
const char* npy_descr(NpyDtype dtype);

// An array of a .npy file, widened to float32.
struct NpyArray {
  /// Dimensions, outermost first; empty for a 0-d (scalar) array; a dimension may be 0.
  std::vector<int64_t> shape;
  /// product(shape) elements in C (row-major) order.
  std::vector<float> values;
  /// The file's element type (values are always float32 in memory).
  NpyDtype dtype = NpyDtype::kFloat32;
};

// Every problem with a .npy file, read or written.
class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Most dimensions accepted (numpy 2's own limit).
constexpr size_t kMaxNpyDims = 64;
// Largest header accepted; real headers of supported arrays are under 2 KiB.
constexpr size_t kMaxNpyHeaderBytes = 1u << 20;

// Parses an in-memory .npy file of `size` bytes; `source` names it in error messages.
// Throws NpyError on any malformed, unsupported or size-inconsistent content.
NpyArray parse_npy(const void* data, size_t size, const std::string& source);

// Reads and parses a regular file.
NpyArray read_npy(const std::string& path);

// The bytes of a .npy file holding `values` (product(shape) floats, C order) stored as
// `dtype` (float16 rounds to nearest even). `major_version` 1 or 2 forces a format version;
// 0 picks 1.0 unless the header needs 2.0. Throws NpyError on a negative dimension.
std::string serialize_npy(const std::vector<int64_t>& shape, const float* values,
                          NpyDtype dtype = NpyDtype::kFloat32, int major_version = 0);

// Writes serialize_npy(...) to `path`, replacing it; streams the data, so no second copy of
// the array is made. Throws NpyError when the file cannot be written.
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* values,
               NpyDtype dtype = NpyDtype::kFloat32);

// The number of elements of `shape`, or NpyError when a dimension is negative or the product
// overflows int64.
int64_t npy_element_count(const std::vector<int64_t>& shape);

}  // namespace hvlm::client
