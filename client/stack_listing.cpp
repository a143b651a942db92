#include "client/stack_listing.h"

namespace hvlm::client {

void print_stacks(const std::vector<hvlm::v1::StackInfo>& stacks, std::ostream& out) {
  out << stacks.size() << (stacks.size() == 1 ? " stack" : " stacks") << "\n";
  for (const hvlm::v1::StackInfo& stack : stacks) {
    out << "\n" << stack.name() << "\n";
    out << "  dim " << stack.dim() << ", dtype " << stack.dtype() << ", device " << stack.device()
        << "\n";
    out << "  weights: " << stack.weights_source()
        << (stack.weights_loaded() ? " (loaded)" : " (not loaded from a file)") << "\n";
    if (!stack.fingerprint().empty()) out << "  fingerprint: " << stack.fingerprint() << "\n";
    out << "  blocks (" << stack.blocks_size() << "):\n";
    for (const hvlm::v1::BlockInfo& block : stack.blocks()) {
      out << "    [" << block.index() << "] " << block.type() << " " << block.options_json()
          << "\n";
      if (block.has_memory() || block.type() == "cross_memory") {
        const hvlm::v1::MemorySettings& memory = block.memory();
        out << "        memory: policy " << hvlm::v1::MemoryPolicy_Name(memory.policy())
            << ", capacity " << memory.capacity();
        if (memory.policy() != hvlm::v1::MERGE) {
          out << ", tokens_per_segment " << memory.tokens_per_segment();
        }
        out << "\n";
      }
    }
  }
}

}  // namespace hvlm::client
