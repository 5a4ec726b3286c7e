#include "ops/service_notify.h"

#include <atomic>

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

void notify_stopping() {
  if (!stopping_sent.exchange(true)) notify("STOPPING=1\nSTATUS=draining");
}

}  // namespace offload
