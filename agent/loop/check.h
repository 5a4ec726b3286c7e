// OFFLOAD_ASSERT: a broken invariant of our own aborts, in every build type.
// Bad input from outside is never asserted on; it is handled and counted.
#pragma once

#include <cstdio>
#include <cstdlib>

#define OFFLOAD_ASSERT(cond)                                                   \
  do {                                                                         \
    if (__builtin_expect(!(cond), 0)) {                                        \
      std::fprintf(stderr, "offload: assertion failed: %s (%s:%d)\n", #cond,   \
                   __FILE__, __LINE__);                                        \
      std::abort();                                                            \
    }                                                                          \
  } while (0)
