#include "ops/service_notify.h"

#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>

#ifdef OFFLOAD_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace offload {

namespace {

// sd_notify returns 0 when NOTIFY_SOCKET is unset and < 0 when the socket
// cannot be reached; either way the agent serves on: the manager only loses
// its view of the state (it then times out the start, which is its to say).
void notify(const char* state) {
#ifdef OFFLOAD_HAVE_SYSTEMD
  (void)sd_notify(0, state);
#else
  (void)state;
#endif
}

std::atomic<bool> stopping_sent{false};

}  // namespace

bool service_notify_built() {
#ifdef OFFLOAD_HAVE_SYSTEMD
  return true;
#else
  return false;
#endif
}

void notify_ready() { notify("READY=1\nSTATUS=serving"); }

void notify_ready_as_main() {
  const std::string state = "MAINPID=" + std::to_string(::getpid()) + "\nREADY=1\nSTATUS=serving (took over)";
  notify(state.c_str());
}

// systemd (Type=notify-reload, and Type=notify with ExecReload) wants the
// monotonic time with RELOADING=1, so it can tell this reload from the next.
void notify_reloading() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const std::string state = "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=" +
                            std::to_string(uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000);
  notify(state.c_str());
}

void notify_stopping() {
  if (!stopping_sent.exchange(true)) notify("STOPPING=1\nSTATUS=draining");
}

}  // namespace offload
