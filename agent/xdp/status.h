#pragma once
// The result of an XDP guard operation: ok, or an exit code with one line saying why.

#include <string>
#include <utility>

namespace offload::xdp {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // the system said no: privilege, state, kernel
inline constexpr int kExitBadInput = 2;  // the operator's input was wrong

struct Status {
  int exit_code = kExitOk;
  std::string message;  // one line, no trailing newline; empty when ok

  bool ok() const { return exit_code == kExitOk; }
  static Status success() { return {}; }
  static Status failure(std::string message) { return {kExitFailure, std::move(message)}; }
  static Status bad_input(std::string message) { return {kExitBadInput, std::move(message)}; }
};

}  // namespace offload::xdp
