#include "attention/openmp_wait_policy.h"

#include <cstdlib>
#include <unistd.h>

namespace hvlm {

void use_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 0) != 0) return;
  // Exec the binary by its real path, not /proc/self/exe, so the process keeps its name
  // (`pkill hvlm-server`, ps, top); /proc/self/exe would rename it "exe".
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return;
  path[n] = '\0';
  execv(path, argv);
  // Only reached when execv failed: carry on with the default policy.
}

}  // namespace hvlm
