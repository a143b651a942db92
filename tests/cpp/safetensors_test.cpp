// The safetensors reader and writer: round trips of every supported dtype, the public byte
// layout, and a bounds-checked reader that turns every truncated or malformed file into a
// c10::Error naming the problem. Parsed buffers end at a PROT_NONE guard page, so a read past
// the end of the data crashes the test instead of passing unnoticed.
#include "attention/safetensors.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace hvlm {
namespace {

using nlohmann::json;
using testing::ThrowsWith;

// A copy of `bytes` that ends exactly where an inaccessible page begins.
class GuardedCopy {
 public:
  explicit GuardedCopy(const std::string& bytes) : size_(bytes.size()) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t data_pages = (bytes.size() + page - 1) / page;
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
  size_t size_ = 0, total_ = 0;
};

SafetensorsContents parse_guarded(const std::string& bytes, const std::string& source = "test") {
  GuardedCopy copy(bytes);
  return parse_safetensors(copy.data(), copy.size(), source);
}

std::string le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// A file from a raw header text and data section.
std::string make_file(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

// A file with a JSON header.
std::string make_file(const json& header, const std::string& data) {
  return make_file(header.dump(), data);
}

json entry(const std::string& dtype, std::vector<int64_t> shape, uint64_t begin, uint64_t end) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
}

void expect_same_tensors(const std::map<std::string, at::Tensor>& got,
                         const std::map<std::string, at::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const auto& g = got.at(name);
    EXPECT_EQ(g.scalar_type(), w.scalar_type());
    EXPECT_EQ(g.sizes(), w.sizes());
    EXPECT_TRUE(at::equal(g, w.contiguous()));
  }
}

std::map<std::string, at::Tensor> every_dtype() {
  at::manual_seed(61);
  std::map<std::string, at::Tensor> t;
  t["f32"] = at::randn({2, 3});
  t["f16"] = at::randn({4}).to(at::kHalf);
  t["bf16"] = at::randn({3, 2}).to(at::kBFloat16);
  t["f64"] = at::randn({2, 2}, at::kDouble);
  t["i64"] = at::tensor(std::vector<int64_t>{-(int64_t{1} << 40), -1, 0, 7, int64_t{1} << 62});
  t["i32"] = at::tensor(std::vector<int32_t>{-2147483647, 0, 5, 2147483647});
  t["i16"] = at::tensor(std::vector<int16_t>{-32768, -1, 32767});
  t["i8"] = at::tensor(std::vector<int8_t>{-128, -3, 0, 127});
  t["u8"] = at::tensor(std::vector<uint8_t>{0, 1, 200, 255});
  t["bool"] = at::tensor(std::vector<uint8_t>{1, 0, 0, 1, 1}).to(at::kBool);
  t["empty_f32"] = at::empty({0, 3});
  t["empty_i64"] = at::empty({2, 0}, at::kLong);
  t["scalar_f32"] = at::full({}, 3.5f);
  t["scalar_i64"] = at::full({}, -9, at::kLong);
  t["transposed"] = at::randn({3, 4}).t();  // written contiguous
  return t;
}

TEST(Safetensors, RoundTripsEverySupportedDtypeWithMetadata) {
  const auto tensors = every_dtype();
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"note", "caf\u00e9 \u2713"},
                                                    {"empty", ""}};
  const auto parsed = parse_guarded(serialize_safetensors(tensors, metadata));
  expect_same_tensors(parsed.tensors, tensors);
  EXPECT_EQ(parsed.metadata, metadata);
}

TEST(Safetensors, RoundTripsThroughAFile) {
  const auto tensors = every_dtype();
  const std::string path = ::testing::TempDir() + "hvlm_safetensors_round_trip.safetensors";
  write_safetensors(path, tensors, {{"k", "v"}});
  const auto parsed = read_safetensors(path);
  expect_same_tensors(parsed.tensors, tensors);
  EXPECT_EQ(parsed.metadata, (std::map<std::string, std::string>{{"k", "v"}}));
  std::remove(path.c_str());
}

TEST(Safetensors, RoundTripsWithoutTensorsOrMetadata) {
  const auto parsed = parse_guarded(serialize_safetensors({}));
  EXPECT_TRUE(parsed.tensors.empty());
  EXPECT_TRUE(parsed.metadata.empty());
  EXPECT_TRUE(parse_guarded(make_file("{}")).tensors.empty());
}

// Zero-byte tensors share their offset with the next tensor ([k, k] and [k, k + n]); with
// more than 16 entries std::sort may order them either way.
TEST(Safetensors, RoundTripsManyTensorsAmongThemEmptyOnes) {
  std::map<std::string, at::Tensor> tensors;
  for (int i = 0; i < 40; ++i) {
    const std::string name = "t" + std::to_string(100 + i);
    tensors[name] = (i % 3 == 1) ? at::empty({0}) : at::full({i % 4 + 1}, static_cast<float>(i));
  }
  expect_same_tensors(parse_guarded(serialize_safetensors(tensors)).tensors, tensors);
}

TEST(Safetensors, WritesThePublicLayout) {
  const std::map<std::string, at::Tensor> tensors{
      {"a", at::tensor(std::vector<float>{1.5f, -2.0f})},
      {"b", at::tensor(std::vector<int32_t>{1, 2, 3})}};
  const std::string bytes = serialize_safetensors(tensors, {{"format", "pt"}});
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  ASSERT_LE(8 + header_len, bytes.size());
  const json header = json::parse(bytes.substr(8, header_len));
  EXPECT_EQ(header.at("__metadata__"), json({{"format", "pt"}}));
  EXPECT_EQ(header.at("a").at("dtype"), "F32");
  EXPECT_EQ(header.at("a").at("shape"), json({2}));
  EXPECT_EQ(header.at("b").at("dtype"), "I32");
  EXPECT_EQ(header.at("b").at("shape"), json({3}));
  const std::string data = bytes.substr(8 + header_len);
  EXPECT_EQ(data.size(), 2 * 4 + 3 * 4u);
  auto raw = [&](const std::string& name) {
    const auto& off = header.at(name).at("data_offsets");
    return data.substr(off[0].get<size_t>(), off[1].get<size_t>() - off[0].get<size_t>());
  };
  const float a[] = {1.5f, -2.0f};
  const int32_t b[] = {1, 2, 3};
  EXPECT_EQ(raw("a"), std::string(reinterpret_cast<const char*>(a), sizeof(a)));
  EXPECT_EQ(raw("b"), std::string(reinterpret_cast<const char*>(b), sizeof(b)));
}

TEST(Safetensors, ReadsAFileWrittenByHand) {
  const float values[] = {0.25f, -1.0f, 8.0f};
  const std::string data(reinterpret_cast<const char*>(values), sizeof(values));
  const auto parsed = parse_guarded(
      make_file(json{{"w", entry("F32", {3}, 0, 12)}, {"__metadata__", {{"a", "b"}}}}, data));
  ASSERT_TRUE(parsed.tensors.count("w"));
  EXPECT_TRUE(at::equal(parsed.tensors.at("w"), at::tensor(std::vector<float>{0.25f, -1.0f, 8.0f})));
  EXPECT_EQ(parsed.metadata.at("a"), "b");
}

TEST(Safetensors, EveryTruncationIsAnError) {
  const std::string bytes = serialize_safetensors(
      {{"a", at::randn({3, 2})}, {"b", at::empty({0}, at::kLong)}, {"c", at::ones({5}, at::kByte)},
       {"d", at::full({}, 2.0, at::kDouble)}},
      {{"format", "pt"}});
  std::vector<size_t> accepted, wrong_exception;
  for (size_t len = 0; len < bytes.size(); ++len) {
    try {
      parse_guarded(bytes.substr(0, len));
      accepted.push_back(len);
    } catch (const c10::Error&) {
    } catch (...) {
      wrong_exception.push_back(len);
    }
  }
  EXPECT_TRUE(accepted.empty()) << accepted.size() << " truncations parsed, the first of "
                                << (accepted.empty() ? 0 : accepted.front()) << " bytes";
  EXPECT_TRUE(wrong_exception.empty())
      << wrong_exception.size() << " truncations threw something other than c10::Error";
  EXPECT_NO_THROW(parse_guarded(bytes));
}

TEST(Safetensors, RejectsFilesShorterThanTheLengthField) {
  EXPECT_TRUE(ThrowsWith([] { parse_guarded(""); }, {"shorter than the 8-byte header length"}));
  EXPECT_TRUE(ThrowsWith([] { parse_guarded("1234567"); }, {"7 bytes"}));
}

TEST(Safetensors, RejectsHeaderLengthBeyondTheFile) {
  EXPECT_TRUE(ThrowsWith([] { parse_guarded(le64(1000) + "{}"); },
                         {"header length 1000 runs past the end of the file"}));
}

TEST(Safetensors, RejectsHugeHeaderLength) {
  for (uint64_t len : {~uint64_t{0}, uint64_t{1} << 63, uint64_t{kMaxSafetensorsHeaderBytes} + 1}) {
    EXPECT_TRUE(ThrowsWith([&] { parse_guarded(le64(len) + "{}"); },
                           {"header length " + std::to_string(len), "exceeds the limit"}));
  }
}

TEST(Safetensors, RejectsInvalidJsonHeader) {
  for (const char* header : {"{\"a\": ", "{'a': 1}", "", "{}}", "\xff\xfe"}) {
    EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(header)); },
                           {"the header is not a valid JSON object"}))
        << header;
  }
}

TEST(Safetensors, RejectsDeeplyNestedHeadersWithoutRecursingIntoThem) {
  // 200k levels would overflow the stack if anything recursed over them (parse, dump, free).
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file("{\"a\": {\"dtype\": " + deep + "}}")); },
                         {"nests deeper than 8 levels"}));
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file("{\"a\": {\"dtype\": [[1]], \"shape\": [], "
                                                       "\"data_offsets\": [0, 0]}}")); },
                         {"unsupported dtype a JSON array"}));
}

TEST(Safetensors, RejectsShapesOfMoreThanSixteenDimensions) {
  json header = {{"a", {{"dtype", "F32"}, {"shape", std::vector<int>(17, 1)}, {"data_offsets", {0, 4}}}}};
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(header, std::string(4, '\0'))); },
                         {"17 dimensions, more than 16"}));
}

TEST(Safetensors, RejectsHeaderThatIsNotAnObject) {
  for (const char* header : {"[1, 2]", "\"text\"", "42", "null"}) {
    EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(header)); },
                           {"the header is not a valid JSON object"}))
        << header;
  }
}

TEST(Safetensors, RejectsEntryThatIsNotAnObject) {
  EXPECT_TRUE(ThrowsWith([] { parse_guarded(make_file(json{{"a", 5}}, "")); },
                         {"tensor 'a' must be an object"}));
}

TEST(Safetensors, RejectsUnknownDtype) {
  const std::string data(4, '\0');
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", entry("F8", {4}, 0, 4)}}, data)); },
                         {"tensor 'a'", "unsupported dtype \"F8\""}));
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", entry("f32", {1}, 0, 4)}}, data)); },
                         {"tensor 'a'", "unsupported dtype \"f32\""}));
  auto numeric = entry("F32", {1}, 0, 4);
  numeric["dtype"] = 1;
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", numeric}}, data)); },
                         {"tensor 'a'", "unsupported dtype 1"}));
  auto missing = entry("F32", {1}, 0, 4);
  missing.erase("dtype");
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", missing}}, data)); },
                         {"tensor 'a'", "dtype (none)"}));
}

TEST(Safetensors, RejectsNegativeOrFractionalDims) {
  const std::string data(8, '\0');
  for (const auto& [dims, shown] : std::vector<std::pair<json, std::string>>{
           {json::array({-1}), "-1"}, {json::array({2, -2}), "-2"}, {json::array({2.5}), "2.5"},
           {json::array({"2"}), "\"2\""}, {json::array({true}), "true"}}) {
    auto e = entry("F32", {2}, 0, 8);
    e["shape"] = dims;
    EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", e}}, data)); },
                           {"tensor 'a'", "invalid dimension " + shown}))
        << dims.dump();
  }
  auto no_shape = entry("F32", {2}, 0, 8);
  no_shape["shape"] = 2;
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", no_shape}}, data)); },
                         {"tensor 'a' must have a shape array"}));
}

TEST(Safetensors, RejectsShapeWhoseSizeOverflows) {
  auto e = entry("F32", {int64_t{1} << 40, int64_t{1} << 40}, 0, 8);
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", e}}, std::string(8, '\0'))); },
                         {"tensor 'a'", "overflows"}));
}

TEST(Safetensors, RejectsDataOffsetsOutOfRange) {
  const std::string data(8, '\0');
  EXPECT_TRUE(ThrowsWith(
      [&] { parse_guarded(make_file(json{{"a", entry("F32", {25}, 0, 100)}}, data)); },
      {"tensor 'a'", "data_offsets [0, 100]", "outside the data section of 8 bytes"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { parse_guarded(make_file(json{{"a", entry("F32", {1}, 8, 12)}}, data)); },
      {"tensor 'a'", "data_offsets [8, 12]"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { parse_guarded(make_file(json{{"a", entry("F32", {1}, ~uint64_t{0} - 3, ~uint64_t{0})}}, data)); },
      {"tensor 'a'", "outside the data section"}));
}

TEST(Safetensors, RejectsReversedDataOffsets) {
  EXPECT_TRUE(ThrowsWith(
      [] { parse_guarded(make_file(json{{"a", entry("F32", {1}, 8, 4)}}, std::string(8, '\0'))); },
      {"tensor 'a'", "data_offsets [8, 4]"}));
}

TEST(Safetensors, RejectsMalformedDataOffsets) {
  const std::string data(8, '\0');
  for (const json& offsets : {json::array({0}), json::array({0, 4, 8}), json::array({-4, 4}),
                              json::array({0.0, 4.0}), json("0-4"), json()}) {
    auto e = entry("F32", {1}, 0, 4);
    if (offsets.is_null()) {
      e.erase("data_offsets");
    } else {
      e["data_offsets"] = offsets;
    }
    EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", e}}, data)); },
                           {"tensor 'a' must have data_offsets [begin, end]"}))
        << offsets.dump();
  }
}

TEST(Safetensors, RejectsByteCountNotMatchingShape) {
  const std::string data(16, '\0');
  EXPECT_TRUE(ThrowsWith(
      [&] { parse_guarded(make_file(json{{"a", entry("F32", {3}, 0, 8)}}, data)); },
      {"tensor 'a' has 8 bytes of data, but dtype F32 and shape [3] need 12"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { parse_guarded(make_file(json{{"a", entry("F64", {2}, 0, 8)}}, data)); },
      {"tensor 'a'", "need 16"}));
  EXPECT_TRUE(ThrowsWith(
      [&] { parse_guarded(make_file(json{{"a", entry("F32", {}, 0, 0)}}, data)); },
      {"tensor 'a'", "need 4"}));
}

TEST(Safetensors, RejectsOverlappingTensors) {
  const std::string data(12, '\0');
  EXPECT_TRUE(ThrowsWith(
      [&] {
        parse_guarded(make_file(
            json{{"a", entry("F32", {2}, 0, 8)}, {"b", entry("F32", {2}, 4, 12)}}, data));
      },
      {"tensors 'a' and 'b' overlap"}));
  EXPECT_TRUE(ThrowsWith(
      [&] {
        parse_guarded(make_file(
            json{{"x", entry("F32", {2}, 0, 8)}, {"y", entry("F32", {2}, 0, 8)}}, data));
      },
      {"overlap"}));
}

// Zero bytes overlap nothing. The reference safetensors writer produces such offsets (an
// empty tensor of a dtype group that comes first gets [0, 0], its neighbour [0, n]).
TEST(Safetensors, ZeroByteTensorSharingAnOffsetDoesNotOverlap) {
  const std::string data(8, '\0');
  EXPECT_NO_THROW(parse_guarded(make_file(
      json{{"a", entry("F32", {2}, 0, 8)}, {"b", entry("F64", {0}, 0, 0)}}, data)));
  EXPECT_NO_THROW(parse_guarded(make_file(
      json{{"a", entry("F32", {0}, 0, 0)}, {"b", entry("F32", {2}, 0, 8)}}, data)));
  EXPECT_NO_THROW(parse_guarded(make_file(
      json{{"a", entry("F32", {2}, 0, 8)}, {"b", entry("I64", {0, 3}, 8, 8)}}, data)));
}

TEST(Safetensors, EmptyTensorWithHugeOtherDimensionsIsRejected) {
  const uint64_t big = uint64_t{1} << 62;
  EXPECT_TRUE(ThrowsWith(
      [&] { parse_guarded(make_file(json{{"a", entry("F32", {0, big, big}, 0, 0)}}, "")); },
      {"tensor 'a'", "overflows"}));
}

TEST(Safetensors, RejectsUnknownEntryField) {
  auto e = entry("F32", {1}, 0, 4);
  e["foo"] = 1;
  EXPECT_TRUE(ThrowsWith([&] { parse_guarded(make_file(json{{"a", e}}, std::string(4, '\0'))); },
                         {"tensor 'a' has an unknown field 'foo'"}));
}

TEST(Safetensors, RejectsNonStringMetadata) {
  EXPECT_TRUE(ThrowsWith(
      [] { parse_guarded(make_file(json{{"__metadata__", {{"k", 1}}}}, "")); },
      {"__metadata__ value of 'k' must be a string"}));
  EXPECT_TRUE(ThrowsWith(
      [] { parse_guarded(make_file(json{{"__metadata__", {{"k", {{"nested", "x"}}}}}}, "")); },
      {"__metadata__ value of 'k' must be a string"}));
  EXPECT_TRUE(ThrowsWith(
      [] { parse_guarded(make_file(json{{"__metadata__", json::array({"a"})}}, "")); },
      {"__metadata__ must be an object"}));
}

TEST(Safetensors, ErrorsNameTheSource) {
  EXPECT_TRUE(ThrowsWith(
      [] { parse_guarded(make_file("[]"), "weights/model.safetensors"); },
      {"weights/model.safetensors"}));
}

TEST(Safetensors, MissingFileIsAnErrorNamingThePath) {
  const std::string path = ::testing::TempDir() + "hvlm_no_such_dir/missing.safetensors";
  EXPECT_TRUE(ThrowsWith([&] { read_safetensors(path); }, {"'" + path + "'"}));
}

// std::ifstream opens a directory and reports an end offset of LLONG_MAX on ext4: reading it
// must be a c10::Error naming the path, not a huge allocation.
TEST(Safetensors, DirectoryIsAnErrorNamingThePath) {
  const std::string dir = ::testing::TempDir() + "hvlm_safetensors_test_dir";
  mkdir(dir.c_str(), 0700);
  EXPECT_TRUE(ThrowsWith([&] { read_safetensors(dir); }, {dir}));
  rmdir(dir.c_str());
}

TEST(Safetensors, SerializeRejectsUnsupportedDtypeAndReservedName) {
  EXPECT_TRUE(ThrowsWith([] { serialize_safetensors({{"c", at::zeros({2}, at::kComplexFloat)}}); },
                         {"cannot store dtype"}));
  EXPECT_TRUE(ThrowsWith([] { serialize_safetensors({{"__metadata__", at::zeros({2})}}); },
                         {"'__metadata__' is not a tensor name"}));
}

}  // namespace
}  // namespace hvlm
