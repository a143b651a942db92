// AttentionStack: a stack of every block type runs and equals its blocks applied in order;
// memories and Mamba states are routed to the right blocks, with errors naming blocks[i];
// streaming a Mamba stack over segments equals one forward.
#include "attention/attention_stack.h"

#include "tests/cpp/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace hvlm {
namespace {

using testing::max_relative_error;
using testing::ThrowsWith;

constexpr int64_t kDim = 16;

// local_global, cross_memory, mamba, strided, performer.
const char* const kAllTypes = R"({"dim": 16, "blocks": [
    {"type": "local_global", "num_heads": 2, "local_window": 4, "num_global_tokens": 2},
    {"type": "cross_memory", "num_heads": 2},
    {"type": "mamba", "state_size": 4, "expand_factor": 1.5},
    {"type": "strided", "num_heads": 4, "stride": 3},
    {"type": "performer", "num_heads": 2, "num_random_features": 8, "kernel_type": "relu"}]})";

AttentionStack make_stack(const std::string& spec, uint64_t seed = 81) {
  at::manual_seed(seed);
  AttentionStack stack(StackSpec::parse(spec));
  stack->eval();
  return stack;
}

// clone() gives an independent stack that runs its own copies of the blocks (a copy moved to
// another device or dtype must compute with the moved weights).
TEST(AttentionStack, CloneRunsItsOwnCopyOfTheBlocks) {
  auto stack = make_stack(kAllTypes);
  auto copy = AttentionStack(std::dynamic_pointer_cast<AttentionStackImpl>(stack->clone()));
  c10::InferenceMode guard;
  auto x = testing::randn({2, 9, kDim});
  const auto want = stack->forward(x).y;
  EXPECT_TRUE(at::equal(copy->forward(x).y, want));
  for (auto& p : copy->parameters()) p.mul_(0.5);  // only the copy changes, and it computes with it
  EXPECT_TRUE(at::equal(stack->forward(x).y, want));
  EXPECT_FALSE(at::allclose(copy->forward(x).y, want));
}

TEST(AttentionStack, StackOfEveryBlockTypeRuns) {
  auto stack = make_stack(kAllTypes);
  EXPECT_EQ(stack->num_blocks(), 5u);
  EXPECT_EQ(stack->memory_blocks(), (std::vector<size_t>{1}));
  EXPECT_EQ(stack->mamba_blocks(), (std::vector<size_t>{2}));
  c10::InferenceMode guard;
  auto x = testing::randn({2, 9, kDim});
  std::vector<at::Tensor> memories(5);
  memories[1] = testing::randn({1, 5, kDim});
  auto out = stack->forward(x, memories);
  EXPECT_EQ(out.y.sizes(), x.sizes());
  EXPECT_TRUE(at::isfinite(out.y).all().item<bool>());
  ASSERT_EQ(out.states.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(out.states[i].defined(), i == 2) << "block " << i;
  }
  EXPECT_EQ(out.states[2].conv_state.sizes(), (std::vector<int64_t>{2, 24, 3}));
  EXPECT_EQ(out.states[2].ssm_state.sizes(), (std::vector<int64_t>{2, 24, 4}));
  // Without memories or states: the memory block adds nothing, Mamba starts from zeros.
  EXPECT_EQ(stack->forward(x).y.sizes(), x.sizes());
}

TEST(AttentionStack, ForwardAppliesTheBlocksInOrder) {
  auto stack = make_stack(kAllTypes);
  c10::InferenceMode guard;
  auto x = testing::randn({2, 8, kDim});
  auto memory = testing::randn({2, 3, kDim});
  MambaState state{testing::randn({2, 24, 3}), testing::randn({2, 24, 4})};
  auto out = stack->forward(x, {at::Tensor(), memory, at::Tensor(), at::Tensor(), at::Tensor()},
                            {MambaState{}, MambaState{}, state, MambaState{}, MambaState{}});
  auto block = [&](size_t i) { return stack->blocks[i]; };
  auto h = block(0)->as<HierarchicalAttentionBlockImpl>()->forward(x);
  h = block(1)->as<HierarchicalAttentionBlockImpl>()->forward(h, memory);
  auto [h2, next] = block(2)->as<LinearAttentionBlockImpl>()->forward_stream(h, state);
  h = block(3)->as<HierarchicalAttentionBlockImpl>()->forward(h2);
  h = block(4)->as<LinearAttentionBlockImpl>()->forward(h);
  EXPECT_TRUE(at::equal(out.y, h));
  EXPECT_TRUE(at::equal(out.states[2].ssm_state, next.ssm_state));
  EXPECT_TRUE(at::equal(out.states[2].conv_state, next.conv_state));
}

TEST(AttentionStack, EachBlockIsAPreNormResidualAroundItsMixer) {
  auto stack = make_stack(kAllTypes);
  {
    at::NoGradGuard no_grad;  // LayerNorm affine parameters away from their 1 / 0 init
    for (auto& p : stack->named_parameters()) {
      if (p.key().find("norm") != std::string::npos) {
        p.value().add_(at::randn_like(p.value()) * 0.2);
      }
    }
  }
  c10::InferenceMode guard;
  auto x = testing::randn({2, 7, kDim});
  auto memory = testing::randn({2, 3, kDim});
  auto norm = [](const at::Tensor& t, const torch::nn::LayerNorm& n) {
    return at::layer_norm(t.to(at::kDouble), {kDim}, n->weight.to(at::kDouble),
                          n->bias.to(at::kDouble), 1e-5);
  };
  auto mlp = [](const at::Tensor& t, const Mlp& m) {
    auto hidden = at::gelu(testing::linear64(t, m->fc1->weight, m->fc1->bias));  // exact erf
    return testing::linear64(hidden, m->fc2->weight, m->fc2->bias);
  };
  auto finish = [&](const at::Tensor& h, const torch::nn::LayerNorm& norm2, const Mlp& m) {
    return h + mlp(norm(h, norm2), m);
  };
  for (size_t i : {1, 3}) {
    SCOPED_TRACE("block " + std::to_string(i));
    auto* b = stack->blocks[i]->as<HierarchicalAttentionBlockImpl>();
    auto normed = norm(x, b->norm1).to(at::kFloat);
    auto attn = i == 1 ? b->cross_memory->forward(normed, memory, /*residual=*/false)
                       : b->strided->forward(normed);
    auto want = finish(x.to(at::kDouble) + attn.to(at::kDouble), b->norm2, b->mlp);
    EXPECT_LE(max_relative_error(b->forward(x, i == 1 ? memory : at::Tensor()), want),
              testing::kTolerance);
  }
  auto* b = stack->blocks[2]->as<LinearAttentionBlockImpl>();
  auto attn = b->mamba->forward(norm(x, b->norm1).to(at::kFloat));
  auto want = finish(x.to(at::kDouble) + attn.to(at::kDouble), b->norm2, b->mlp);
  EXPECT_LE(max_relative_error(b->forward(x), want), testing::kTolerance);
}

TEST(AttentionStack, RejectsStateForANonMambaBlock) {
  auto stack = make_stack(kAllTypes);
  c10::InferenceMode guard;
  auto x = testing::randn({1, 4, kDim});
  auto mamba_state = stack->blocks[2]->as<LinearAttentionBlockImpl>()->mamba->initial_state(1);
  for (size_t i : {0, 1, 3, 4}) {
    std::vector<MambaState> states(5);
    states[i] = mamba_state;
    EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, {}, states); },
                           {"blocks[" + std::to_string(i) + "]", "state"}))
        << "block " << i;
  }
  std::vector<MambaState> states(5);
  states[0] = mamba_state;
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, {}, states); },
                         {"blocks[0] (local_global): only mamba blocks take a state"}));
  states[0] = {};
  states[4] = mamba_state;
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, {}, states); },
                         {"blocks[4] (performer)", "only mamba blocks do"}));
}

TEST(AttentionStack, RejectsMemoryForANonCrossMemoryBlock) {
  auto stack = make_stack(kAllTypes);
  c10::InferenceMode guard;
  auto x = testing::randn({1, 4, kDim});
  for (size_t i : {0, 2, 3, 4}) {
    std::vector<at::Tensor> memories(5);
    memories[i] = testing::randn({1, 3, kDim});
    EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, memories); },
                           {"blocks[" + std::to_string(i) + "]", "memory"}))
        << "block " << i;
  }
  std::vector<at::Tensor> memories(5);
  memories[2] = testing::randn({1, 3, kDim});
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, memories); },
                         {"blocks[2] (mamba): only cross_memory blocks take a memory"}));
}

TEST(AttentionStack, RejectsMemoriesAndStatesOfTheWrongLength) {
  auto stack = make_stack(kAllTypes);
  c10::InferenceMode guard;
  auto x = testing::randn({1, 4, kDim});
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, std::vector<at::Tensor>(2)); },
                         {"memories must be empty or have one entry per block (5), got 2"}));
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, {}, std::vector<MambaState>(6)); },
                         {"states must be empty or have one entry per block (5), got 6"}));
}

TEST(AttentionStack, BlockErrorsNameTheBlock) {
  auto stack = make_stack(kAllTypes);
  c10::InferenceMode guard;
  auto x = testing::randn({2, 4, kDim});
  std::vector<at::Tensor> memories(5);
  memories[1] = testing::randn({2, 3, 8});
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, memories); },
                         {"blocks[1] (cross_memory)", "memory must be [B, T, 16], got [2, 3, 8]"}));
  std::vector<MambaState> states(5);
  states[2] = {testing::randn({2, 24, 2}), testing::randn({2, 24, 4})};
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(x, {}, states); },
                         {"blocks[2] (mamba)", "conv_state must be [2, 24, 3], got [2, 24, 2]"}));
  EXPECT_TRUE(ThrowsWith([&] { stack->forward(testing::randn({2, 4, 8})); },
                         {"x must be [B, T, 16], got [2, 4, 8]"}));
}

TEST(AttentionStack, MambaStackStreamedOverSegmentsEqualsOneForward) {
  auto stack = make_stack(R"({"dim": 16, "blocks": [
      {"type": "mamba", "state_size": 4, "expand_factor": 1.5},
      {"type": "mamba", "state_size": 3, "expand_factor": 2.0, "d_conv": 2}]})");
  c10::InferenceMode guard;
  auto x = testing::randn({2, 21, kDim});
  auto full = stack->forward(x);
  std::vector<MambaState> states;  // empty: zeros
  std::vector<at::Tensor> ys;
  int64_t t0 = 0;
  for (int64_t len : {3, 1, 1, 9, 2, 5}) {
    auto out = stack->forward(x.narrow(1, t0, len), {}, states);
    ys.push_back(out.y);
    states = out.states;
    t0 += len;
  }
  ASSERT_EQ(t0, 21);
  EXPECT_LE(max_relative_error(at::cat(ys, 1), full.y), 1e-6);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_LE(max_relative_error(states[i].ssm_state, full.states[i].ssm_state), 1e-6);
    EXPECT_LE(max_relative_error(states[i].conv_state, full.states[i].conv_state), 1e-6);
  }
}

TEST(AttentionStack, CrossMemoryBlockWithoutMemoryEqualsEmptyMemory) {
  auto stack = make_stack(R"({"dim": 16, "blocks": [{"type": "cross_memory", "num_heads": 4}]})");
  c10::InferenceMode guard;
  auto x = testing::randn({2, 6, kDim});
  auto none = stack->forward(x).y;
  EXPECT_TRUE(at::equal(stack->forward(x, {at::Tensor()}).y, none));
  EXPECT_TRUE(at::equal(stack->forward(x, {testing::randn({2, 0, kDim})}).y, none));
  EXPECT_TRUE(at::equal(stack->forward(x, {testing::randn({1, 0, kDim})}).y, none));
  // Only the MLP half acts: x + mlp(norm2(x)).
  auto block = stack->blocks[0]->as<HierarchicalAttentionBlockImpl>();
  EXPECT_TRUE(at::allclose(none, x + block->mlp->forward(block->norm2->forward(x))));
  // A real memory does change the output.
  EXPECT_FALSE(at::allclose(stack->forward(x, {testing::randn({2, 3, kDim})}).y, none));
}

TEST(AttentionStack, OptionErrorsNameTheBlock) {
  EXPECT_TRUE(ThrowsWith(
      [] {
        AttentionStack(StackSpec::parse(R"({"dim": 16, "blocks": [
            {"type": "mamba"}, {"type": "strided", "num_heads": 3}]})"));
      },
      {"blocks[1] (strided)", "num_heads (3) must divide dim (16)"}));
  EXPECT_TRUE(ThrowsWith(
      [] {
        AttentionStack(StackSpec::parse(
            R"({"dim": 16, "blocks": [{"type": "local_global", "num_heads": 4, "local_window": 5}]})"));
      },
      {"blocks[0] (local_global)", "local_window must be even and >= 2, got 5"}));
  EXPECT_TRUE(ThrowsWith(
      [] {
        AttentionStack(StackSpec::parse(R"({"dim": 16, "blocks": [
            {"type": "strided", "num_heads": 4}, {"type": "cross_memory", "num_heads": 4},
            {"type": "performer", "num_heads": 4, "kernel_type": "foo"}]})"));
      },
      {"blocks[2] (performer)", "kernel_type must be one of softmax, relu, elu, got 'foo'"}));
  EXPECT_TRUE(ThrowsWith(
      [] {
        AttentionStack(StackSpec::parse(
            R"({"dim": 16, "blocks": [{"type": "mamba", "state_size": 0}]})"));
      },
      {"blocks[0] (mamba)", "state_size must be >= 1, got 0"}));
  EXPECT_TRUE(ThrowsWith(
      [] {
        AttentionStack(StackSpec::parse(
            R"({"dim": 16, "blocks": [{"type": "strided", "num_heads": 4, "stride": 0}]})"));
      },
      {"blocks[0] (strided)", "stride must be >= 1, got 0"}));
}

TEST(AttentionStack, EvalModeTurnsDropoutOff) {
  auto stack = make_stack(R"({"dim": 16, "blocks": [
      {"type": "strided", "num_heads": 4, "stride": 2, "dropout": 0.5},
      {"type": "mamba", "state_size": 2, "dropout": 0.5}]})");
  c10::InferenceMode guard;
  auto x = testing::randn({1, 6, kDim});
  EXPECT_TRUE(at::equal(stack->forward(x).y, stack->forward(x).y));
}

TEST(AttentionStack, ConcurrentForwardsMatchSequentialOnes) {
  auto stack = make_stack(kAllTypes);
  std::vector<at::Tensor> inputs, memories, want(4), got(4);
  {
    c10::InferenceMode guard;
    for (int i = 0; i < 4; ++i) {
      inputs.push_back(testing::randn({1, 5 + i, kDim}));
      memories.push_back(testing::randn({1, 2 + i, kDim}));
      want[i] = stack->forward(inputs[i], {at::Tensor(), memories[i], at::Tensor(), at::Tensor(),
                                           at::Tensor()}).y;
    }
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      c10::InferenceMode guard;
      got[i] = stack->forward(inputs[i], {at::Tensor(), memories[i], at::Tensor(), at::Tensor(),
                                          at::Tensor()}).y;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(at::equal(got[i], want[i])) << "input " << i;
}

}  // namespace
}  // namespace hvlm
