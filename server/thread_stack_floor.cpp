// A floor under the stack size threads are created with, for libraries that ask for tiny
// stacks. civetweb (the metrics HTTP server) creates its threads with a fixed 100 KiB stack.
// glibc puts every loaded library's static thread-local storage on each thread's stack, and
// this process loads LibTorch with OpenBLAS and glog, whose TLS alone is over 100 KiB, so
// pthread_create fails with EINVAL ("Cannot create first worker thread"). This definition
// interposes pthread_attr_setstacksize (the executable's symbols come before libc's) and
// raises any smaller request to kMinStackBytes before calling libc's. Requests at or above it,
// and threads that keep the default size, are unaffected.
//
// Compiled into every executable that links hvlm_server (an INTERFACE source), because a
// static library's object would not be linked in for a symbol only a shared library needs.
#include <dlfcn.h>
#include <pthread.h>

#include <cstddef>

namespace {

constexpr size_t kMinStackBytes = 1 << 20;  // 1 MiB: room for the TLS and civetweb's frames

using SetStackSize = int (*)(pthread_attr_t*, size_t);

SetStackSize libc_setstacksize() {
  static const SetStackSize real =
      reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stacksize) {
  const SetStackSize real = libc_setstacksize();
  if (real == nullptr) return 0;  // keep the default size, which always fits
  return real(attr, stacksize < kMinStackBytes ? kMinStackBytes : stacksize);
}
