// unique_temp_path: a file name under gtest's TempDir() that no other test (or parallel
// ctest process) uses: it holds the running test's suite and name and the process id.
// Header-only; call it from the test's own thread.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

namespace hvlm::client::testing {

inline std::string unique_temp_path(const std::string& name) {
  const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
  return ::testing::TempDir() + "/hvlm_client_" + test->test_suite_name() + "_" + test->name() +
         "_" + std::to_string(getpid()) + "_" + name;
}

}  // namespace hvlm::client::testing
