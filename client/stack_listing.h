// The `list` command's output: a readable description of the stacks a server hosts (name,
// dim, dtype, device, weights, fingerprint, and every block's type, options and memory
// settings). Pure functions; thread-safe.
#pragma once

#include "hvlm/v1/attention_service.pb.h"

#include <ostream>
#include <vector>

namespace hvlm::client {

// Writes one paragraph per stack, in the given order.
void print_stacks(const std::vector<hvlm::v1::StackInfo>& stacks, std::ostream& out);

}  // namespace hvlm::client
