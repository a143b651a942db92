// The `list` output: every stack's figures and every block, with memory settings for
// cross_memory blocks only.
#include "client/stack_listing.h"

#include <gtest/gtest.h>

#include <sstream>

namespace hvlm::client {
namespace {

TEST(StackListing, PrintsStacksBlocksAndMemorySettings) {
  hvlm::v1::StackInfo stack;
  stack.set_name("video");
  stack.set_dim(768);
  stack.set_dtype("bfloat16");
  stack.set_device("cuda:0");
  stack.set_weights_loaded(true);
  stack.set_weights_source("/models/video.safetensors");
  stack.set_fingerprint("abc123");
  hvlm::v1::BlockInfo* strided = stack.add_blocks();
  strided->set_index(0);
  strided->set_type("strided");
  strided->set_options_json("{\"stride\": 4}");
  hvlm::v1::BlockInfo* memory = stack.add_blocks();
  memory->set_index(1);
  memory->set_type("cross_memory");
  memory->set_options_json("{}");
  memory->mutable_memory()->set_policy(hvlm::v1::MERGE);
  memory->mutable_memory()->set_capacity(64);

  std::ostringstream out;
  print_stacks({stack}, out);
  EXPECT_EQ(out.str(),
            "1 stack\n"
            "\n"
            "video\n"
            "  dim 768, dtype bfloat16, device cuda:0\n"
            "  weights: /models/video.safetensors (loaded)\n"
            "  fingerprint: abc123\n"
            "  blocks (2):\n"
            "    [0] strided {\"stride\": 4}\n"
            "    [1] cross_memory {}\n"
            "        memory: policy MERGE, capacity 64\n");
}

TEST(StackListing, FifoMemoryShowsTokensPerSegmentAndNoStacksSaySo) {
  hvlm::v1::StackInfo stack;
  stack.set_name("s");
  hvlm::v1::BlockInfo* memory = stack.add_blocks();
  memory->set_type("cross_memory");
  memory->mutable_memory()->set_policy(hvlm::v1::FIFO);
  memory->mutable_memory()->set_capacity(32);
  memory->mutable_memory()->set_tokens_per_segment(8);
  std::ostringstream out;
  print_stacks({stack, stack}, out);
  EXPECT_NE(out.str().find("memory: policy FIFO, capacity 32, tokens_per_segment 8"),
            std::string::npos);
  EXPECT_EQ(out.str().rfind("2 stacks\n", 0), 0u);
  std::ostringstream none;
  print_stacks({}, none);
  EXPECT_EQ(none.str(), "0 stacks\n");
}

}  // namespace
}  // namespace hvlm::client
