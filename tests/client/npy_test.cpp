// The .npy reader and writer: round trips of '<f4' and '<f2' arrays, numpy's exact byte
// layout (versions 1.0 and 2.0), and a bounds-checked reader that turns every truncated or
// malformed file into an NpyError naming the problem. Parsed buffers end at a PROT_NONE guard
// page, so a read past the end of the data crashes the test instead of passing unnoticed.
#include "client/npy.h"

#include "client/half_precision.h"
#include "tests/client/temp_path.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace hvlm::client {
namespace {

// A copy of `bytes` that ends exactly where an inaccessible page begins.
class GuardedCopy {
 public:
  explicit GuardedCopy(const std::string& bytes) : size_(bytes.size()) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t data_pages = (bytes.size() + page - 1) / page + 1;
    total_ = (data_pages + 1) * page;
    void* base = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(base, MAP_FAILED);
    base_ = static_cast<char*>(base);
    EXPECT_EQ(mprotect(base_ + data_pages * page, page, PROT_NONE), 0);
    data_ = base_ + data_pages * page - bytes.size();
    if (!bytes.empty()) std::memcpy(data_, bytes.data(), bytes.size());
  }
  ~GuardedCopy() { munmap(base_, total_); }
  GuardedCopy(const GuardedCopy&) = delete;
  GuardedCopy& operator=(const GuardedCopy&) = delete;

  const void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  char* base_ = nullptr;
  char* data_ = nullptr;
  size_t size_ = 0;
  size_t total_ = 0;
};

NpyArray parse_guarded(const std::string& bytes) {
  GuardedCopy copy(bytes);
  return parse_npy(copy.data(), copy.size(), "test.npy");
}

// Passes iff parsing `bytes` throws an NpyError whose message contains `part`.
::testing::AssertionResult RejectsWith(const std::string& bytes, const std::string& part) {
  try {
    parse_guarded(bytes);
  } catch (const NpyError& e) {
    if (std::string(e.what()).find(part) != std::string::npos) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "message '" << e.what() << "' lacks '" << part << "'";
  }
  return ::testing::AssertionFailure() << "no NpyError";
}

// A file with the given header dict (padded as numpy pads) and raw data.
std::string file_with_header(const std::string& dict, const std::string& data, int version = 1) {
  const size_t preamble = version == 1 ? 10 : 12;
  std::string header = dict;
  while ((preamble + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(version);
  out += '\0';
  const size_t n = header.size();
  out += static_cast<char>(n & 0xff);
  out += static_cast<char>((n >> 8) & 0xff);
  if (version != 1) {
    out += static_cast<char>((n >> 16) & 0xff);
    out += static_cast<char>((n >> 24) & 0xff);
  }
  return out + header + data;
}

std::vector<float> iota_values(size_t n) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = static_cast<float>(i) * 0.5f - 3.0f;
  return values;
}

TEST(Npy, Float32RoundTripKeepsShapeAndValues) {
  const std::vector<float> values = {1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 1e30f};
  const NpyArray array = parse_guarded(serialize_npy({2, 3}, values.data()));
  EXPECT_EQ(array.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(array.dtype, NpyDtype::kFloat32);
  ASSERT_EQ(array.values.size(), values.size());
  EXPECT_EQ(std::memcmp(array.values.data(), values.data(), values.size() * 4), 0);
}

TEST(Npy, Float16RoundTripOfRepresentableValuesIsExact) {
  const std::vector<float> values = {0.0f, 1.0f, -2.5f, 0.099975586f, 65504.0f, 5.9604645e-8f};
  const NpyArray array = parse_guarded(serialize_npy({6}, values.data(), NpyDtype::kFloat16));
  EXPECT_EQ(array.dtype, NpyDtype::kFloat16);
  EXPECT_EQ(array.shape, (std::vector<int64_t>{6}));
  EXPECT_EQ(array.values, values);
}

TEST(Npy, HeaderMatchesNumpyByteForByte) {
  // numpy 1.24: np.save(f, np.arange(6, dtype='<f4').reshape(2, 3)).
  const std::vector<float> values = iota_values(6);
  const std::string bytes = serialize_npy({2, 3}, values.data());
  std::string expected("\x93NUMPY\x01\x00\x76\x00", 10);
  expected += "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  expected += std::string(128 - 1 - expected.size(), ' ') + "\n";
  ASSERT_EQ(bytes.size(), 128u + 24u);
  EXPECT_EQ(bytes.substr(0, 128), expected);
  // The data is little-endian float32: 0.5 * 0 - 3 = -3.0f is 0xc0400000.
  EXPECT_EQ(bytes.substr(128, 4), std::string("\x00\x00\x40\xc0", 4));
}

TEST(Npy, OneDimensionalAndScalarShapesAreWrittenAsPythonTuples) {
  const float value = 7.0f;
  const std::string one = serialize_npy({1}, &value);
  EXPECT_NE(one.find("'shape': (1,), }"), std::string::npos);
  const std::string scalar = serialize_npy({}, &value);
  EXPECT_NE(scalar.find("'shape': (), }"), std::string::npos);
  const NpyArray array = parse_guarded(scalar);
  EXPECT_TRUE(array.shape.empty());
  EXPECT_EQ(array.values, std::vector<float>{7.0f});
}

TEST(Npy, Version2HeaderIsReadAndWritten) {
  const std::vector<float> values = iota_values(12);
  const std::string bytes = serialize_npy({3, 4}, values.data(), NpyDtype::kFloat32, 2);
  ASSERT_GE(bytes.size(), 12u);
  EXPECT_EQ(bytes[6], '\x02');
  EXPECT_EQ(bytes[7], '\x00');
  // 4-byte header length; data starts on a 64-byte boundary.
  const size_t header = static_cast<unsigned char>(bytes[8]) |
                        (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
  EXPECT_EQ((12 + header) % 64, 0u);
  const NpyArray array = parse_guarded(bytes);
  EXPECT_EQ(array.shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(array.values, values);
}

TEST(Npy, HandWrittenHeadersInAnyKeyOrderAreAccepted) {
  const std::vector<float> values = {1.0f, 2.0f};
  std::string data(8, '\0');
  std::memcpy(data.data(), values.data(), 8);
  const NpyArray a = parse_guarded(
      file_with_header("{\"shape\": (2L,), \"fortran_order\": False, \"descr\": \"<f4\"}", data));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(a.values, values);
  const NpyArray b = parse_guarded(
      file_with_header("{'descr':'<f4','fortran_order':False,'shape':(1,2)}", data, 2));
  EXPECT_EQ(b.shape, (std::vector<int64_t>{1, 2}));
}

TEST(Npy, ZeroSizedArraysHaveNoData) {
  const NpyArray array = parse_guarded(serialize_npy({0, 5}, nullptr));
  EXPECT_EQ(array.shape, (std::vector<int64_t>{0, 5}));
  EXPECT_TRUE(array.values.empty());
}

TEST(Npy, EveryTruncationOfAValidFileIsACleanError) {
  for (int version : {1, 2}) {
    for (NpyDtype dtype : {NpyDtype::kFloat32, NpyDtype::kFloat16}) {
      const std::vector<float> values = iota_values(6);
      const std::string bytes = serialize_npy({2, 3}, values.data(), dtype, version);
      for (size_t size = 0; size < bytes.size(); ++size) {
        SCOPED_TRACE("version " + std::to_string(version) + ", " + std::to_string(size) +
                     " of " + std::to_string(bytes.size()) + " bytes");
        EXPECT_THROW(parse_guarded(bytes.substr(0, size)), NpyError);
      }
      EXPECT_NO_THROW(parse_guarded(bytes));
    }
  }
}

TEST(Npy, TruncationErrorsSayWhatIsMissing) {
  const std::vector<float> values = iota_values(6);
  const std::string bytes = serialize_npy({2, 3}, values.data());
  EXPECT_TRUE(RejectsWith("", "empty file"));
  EXPECT_TRUE(RejectsWith(bytes.substr(0, 8), "shorter than the preamble"));
  EXPECT_TRUE(RejectsWith(bytes.substr(0, 40), "the header needs 118 bytes"));
  EXPECT_TRUE(RejectsWith(bytes.substr(0, 140), "needs 24 data bytes, the file has 12"));
}

TEST(Npy, FortranOrderIsRejected) {
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
                       std::string(4, '\0')),
      "fortran_order True is not supported"));
}

TEST(Npy, BadMagicIsRejected) {
  const float value = 1.0f;
  std::string bytes = serialize_npy({1}, &value);
  bytes[1] = 'X';
  EXPECT_TRUE(RejectsWith(bytes, "bad magic"));
  EXPECT_TRUE(RejectsWith("PK\x03\x04", "bad magic"));
  EXPECT_TRUE(RejectsWith("\x93NUM", "truncated"));
}

TEST(Npy, UnsupportedVersionsAreRejected) {
  const float value = 1.0f;
  std::string bytes = serialize_npy({1}, &value);
  bytes[6] = '\x03';
  EXPECT_TRUE(RejectsWith(bytes, "version 3.0 is not supported"));
  bytes[6] = '\x01';
  bytes[7] = '\x01';
  EXPECT_TRUE(RejectsWith(bytes, "version 1.1 is not supported"));
}

TEST(Npy, ShapeAndDataSizeMustAgree) {
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                       std::string(20, '\0')),
      "needs 24 data bytes, the file has 20"));
  // Trailing bytes are an error too, not silently ignored.
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                       std::string(6, '\0')),
      "needs 4 data bytes, the file has 6"));
}

TEST(Npy, HugeShapesAreRejectedBeforeAnyAllocation) {
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f4', 'fortran_order': False, "
                       "'shape': (4294967296, 4294967296, 4294967296), }",
                       std::string(16, '\0')),
      "needs more than 2^64 data bytes"));
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f4', 'fortran_order': False, "
                       "'shape': (99999999999999999999,), }",
                       ""),
      "does not fit in int64"));
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9223372036854775807, "
                       "9223372036854775807), }",
                       "x"),
      "needs 0 data bytes, the file has 1"));
}

TEST(Npy, UnsupportedDtypesAreNamed) {
  const std::string data(8, '\0');
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", data),
      "big-endian"));
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", data),
      "unsupported dtype '<f8'"));
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", data),
      "structured dtypes are not supported"));
}

TEST(Npy, MalformedHeadersAreRejected) {
  const std::string data(4, '\0');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{'descr': '<f4', 'fortran_order': False}", "key 'shape' is missing"},
      {"{'descr': '<f4', 'shape': (1,)}", "key 'fortran_order' is missing"},
      {"{'fortran_order': False, 'shape': (1,)}", "key 'descr' is missing"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "appears twice"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}", "unexpected key"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", "True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1)}", "must be written (N,)"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "non-negative"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [1]}", "must be a tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk", "after the closing"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (1,)}", "expected ':'"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", "expected ',' or '}'"},
      {"{'descr': '<f4' 'fortran_order': False, 'shape': (1,)}", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,", "expected"},
      {"{'descr': '<f\\x34', 'fortran_order': False, 'shape': (1,)}", "escapes"},
      {"'descr'", "expected '{'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "expected ',' or '}'"},
  };
  for (const auto& [dict, part] : cases) {
    SCOPED_TRACE(dict);
    EXPECT_TRUE(RejectsWith(file_with_header(dict, data), part));
  }
}

TEST(Npy, TooManyDimensionsAreRejected) {
  std::string shape = "(";
  for (size_t i = 0; i <= kMaxNpyDims; ++i) shape += "1, ";
  EXPECT_TRUE(RejectsWith(
      file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + "), }",
                       std::string(4, '\0')),
      "more than 64 dimensions"));
}

TEST(Npy, HeaderLengthBeyondTheLimitIsRejected) {
  std::string bytes("\x93NUMPY\x02\x00\xff\xff\xff\x7f", 12);
  EXPECT_TRUE(RejectsWith(bytes + "{}", "exceeds the limit"));
}

TEST(Npy, FilesRoundTripThroughTheFileSystem) {
  const std::string path = testing::unique_temp_path("round_trip.npy");
  const std::vector<float> values = iota_values(24);
  write_npy(path, {2, 3, 4}, values.data());
  const NpyArray array = read_npy(path);
  EXPECT_EQ(array.shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(array.values, values);
  std::remove(path.c_str());
}

TEST(Npy, LargeFilesAreWrittenInChunksIdenticallyToSerialize) {
  const std::string path = testing::unique_temp_path("large.npy");
  const std::vector<float> values = iota_values(3 * 70000);
  write_npy(path, {3, 70000}, values.data(), NpyDtype::kFloat16);
  std::ifstream in(path, std::ios::binary);
  const std::string written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(written, serialize_npy({3, 70000}, values.data(), NpyDtype::kFloat16));
  std::remove(path.c_str());
}

TEST(Npy, MissingFilesAndDirectoriesAreNamed) {
  try {
    read_npy("/nonexistent/features.npy");
    FAIL() << "no error";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/features.npy"), std::string::npos);
  }
  try {
    read_npy(::testing::TempDir());
    FAIL() << "no error";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos);
  }
}

TEST(Npy, NegativeDimensionsCannotBeWritten) {
  EXPECT_THROW(serialize_npy({-1}, nullptr), NpyError);
  EXPECT_THROW(serialize_npy({1}, nullptr, NpyDtype::kFloat32, 3), NpyError);
}

}  // namespace
}  // namespace hvlm::client
