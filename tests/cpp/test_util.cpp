#include "tests/cpp/test_util.h"

#include "attention/openmp_wait_policy.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <set>

namespace hvlm::testing {
namespace {

// Two intra-op threads: the size of the CI machine, and enough to exercise the parallel
// paths (parallel_for over scan work items, head chunks) in every test.
class ThreadsEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { at::set_num_threads(2); }
};

[[maybe_unused]] const auto* const kThreadsEnvironment =
    ::testing::AddGlobalTestEnvironment(new ThreadsEnvironment);

}  // namespace

double max_relative_error(const at::Tensor& got, const at::Tensor& want) {
  EXPECT_EQ(got.sizes(), want.sizes());
  if (got.sizes() != want.sizes()) return std::numeric_limits<double>::infinity();
  if (want.numel() == 0) return 0.0;
  const auto g = got.to(at::kDouble), w = want.to(at::kDouble);
  const double diff = (g - w).abs().max().item<double>();
  const double scale = w.abs().max().item<double>();
  if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
  return scale > 0 ? diff / scale : diff;
}

at::Tensor randn(at::IntArrayRef shape, double scale) {
  return at::randn(shape, at::TensorOptions().dtype(at::kFloat)) * scale;
}

at::Tensor masked_attention_oracle(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& allowed) {
  const auto q64 = q.to(at::kDouble), k64 = k.to(at::kDouble), v64 = v.to(at::kDouble);
  auto scores = at::matmul(q64, k64.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
  if (allowed.defined()) {
    scores = at::where(allowed, scores,
                       at::full({}, -std::numeric_limits<double>::infinity(), scores.options()));
  }
  return at::matmul(at::softmax(scores, -1), v64);
}

at::Tensor strided_mask(int64_t n, int64_t stride) {
  auto i = at::arange(n, at::kLong).view({n, 1});
  auto j = at::arange(n, at::kLong).view({1, n});
  return (i - j).remainder(stride) == 0;
}

std::vector<int64_t> global_positions_ref(int64_t n, int64_t g) {
  std::set<int64_t> out;
  for (int64_t t = 0; t < g; ++t) out.insert(t * n / g);  // non-negative: floor
  return {out.begin(), out.end()};
}

at::Tensor local_global_mask(int64_t n, int64_t local_window, int64_t num_global_tokens) {
  auto allowed = at::zeros({n, n}, at::kBool);
  auto a = allowed.accessor<bool, 2>();
  std::vector<bool> is_global(n, false);
  for (int64_t p : global_positions_ref(n, num_global_tokens)) is_global[p] = true;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      a[i][j] = std::abs(i - j) <= local_window / 2 || is_global[j] || is_global[i];
    }
  }
  return allowed;
}

at::Tensor linear64(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  auto out = at::matmul(x.to(at::kDouble), weight.to(at::kDouble).t());
  if (bias.defined()) out = out + bias.to(at::kDouble);
  return out;
}

at::Tensor split_heads_ref(const at::Tensor& x, int64_t num_heads) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2);
  return x.reshape({b, t, num_heads, d / num_heads}).permute({0, 2, 1, 3});
}

at::Tensor merge_heads_ref(const at::Tensor& x) {
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), hd = x.size(3);
  return x.permute({0, 2, 1, 3}).reshape({b, t, h * hd});
}

at::Tensor projected_attention_oracle(const QkvProjections& proj, const at::Tensor& queries,
                                      const at::Tensor& keys, int64_t num_heads,
                                      const at::Tensor& allowed) {
  auto q = split_heads_ref(linear64(queries, proj.q_proj->weight, proj.q_proj->bias), num_heads);
  auto k = split_heads_ref(linear64(keys, proj.k_proj->weight, proj.k_proj->bias), num_heads);
  auto v = split_heads_ref(linear64(keys, proj.v_proj->weight, proj.v_proj->bias), num_heads);
  if (k.size(0) != q.size(0)) {
    k = k.expand({q.size(0), -1, -1, -1});
    v = v.expand({q.size(0), -1, -1, -1});
  }
  auto attn = merge_heads_ref(masked_attention_oracle(q, k, v, allowed));
  return linear64(attn, proj.out_proj->weight, proj.out_proj->bias);
}

::testing::AssertionResult ThrowsWith(const std::function<void()>& fn,
                                      std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& part : parts) {
      if (msg.find(part) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "the error does not contain \"" << part << "\"; it reads:\n" << msg;
      }
    }
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << "threw a non-c10::Error exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

std::string error_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-c10::Error exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

}  // namespace hvlm::testing

// Our own main (GTest::gtest_main's is then not linked in): LibTorch's OpenMP threads spin
// after each parallel region unless OMP_WAIT_POLICY=PASSIVE is set before the runtime loads.
// On the 2-core CI machine with two other busy processes the suites took 28 s spinning and
// 2.4 s passive; use_passive_openmp_wait re-executes the binary with the policy set.
int main(int argc, char** argv) {
  hvlm::use_passive_openmp_wait(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

