#include "attention/openmp_wait_policy.h"

#include <cstdlib>
#include <unistd.h>

namespace hvlm {

void use_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 0) != 0) return;
  execv("/proc/self/exe", argv);
  // Only reached when execv failed: carry on with the default policy.
}

}  // namespace hvlm
