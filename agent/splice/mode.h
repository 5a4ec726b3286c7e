// Which mode moves pass-through bytes, chosen once at start-up: the kernel
// splice when it is allowed (`splice = "auto"` or "kernel", no --no-bpf),
// this process may load BPF, and the self-test passes on this kernel; else
// user space. The choice and its reason are one line for the log.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "splice/splicer.h"

namespace offload::splice {

struct Choice {
  std::unique_ptr<Splicer> splicer;  // null: user space
  std::string line;                  // "pass-through: kernel splice (...)" or "pass-through: user space (...)"
  std::string error;                 // set when `splice = "kernel"` cannot be had: start-up fails with it
  std::vector<std::string> notes;    // stale pins removed and the like
};

// `setting`: "auto", "kernel" or "user"; `no_bpf`: the --no-bpf flag;
// `max_pairs`: the most pairs open at once (sizes the maps).
Choice choose(const std::string& setting, bool no_bpf, uint32_t max_pairs);

// Root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN.
bool have_privilege();

}  // namespace offload::splice
