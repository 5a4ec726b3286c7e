// The agent's version: CMake's project version (the build defines
// OFFLOAD_VERSION), shown by `--version` and offload_build_info.
#pragma once

#ifndef OFFLOAD_VERSION
#define OFFLOAD_VERSION "unknown"
#endif

namespace offload {
inline constexpr const char* kVersion = OFFLOAD_VERSION;
}
