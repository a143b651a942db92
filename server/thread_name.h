// Names the calling thread, as top -H, perf and /proc/PID/task/TID/comm show it, so that a
// profile of the server can tell its threads apart (bench/service_bench.py reports CPU per
// thread name). Linux keeps the first 15 bytes; elsewhere this does nothing.
#pragma once

#if defined(__linux__)
#include <pthread.h>
#endif

namespace hvlm {

inline void name_this_thread(const char* name) {
#if defined(__linux__)
  char truncated[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) truncated[i] = name[i];
  (void)pthread_setname_np(pthread_self(), truncated);  // fails only for names over 15 bytes
#else
  (void)name;
#endif
}

}  // namespace hvlm
