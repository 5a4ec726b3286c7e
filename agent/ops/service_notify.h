// Tells a service manager how start-up and shutdown go (systemd's
// Type=notify protocol, through libsystemd's sd_notify): READY=1 once every
// shard listens, STOPPING=1 when draining starts, RELOADING=1 (with
// MONOTONIC_USEC) when a reload begins and READY=1 again once it is done. Without a manager
// (NOTIFY_SOCKET unset) each call does nothing, and so does a build without
// libsystemd: the agent runs the same with or without systemd.
#pragma once

namespace offload {

// True when this build can talk to systemd at all (libsystemd was found).
bool service_notify_built();
void notify_ready();
// READY=1 with MAINPID=this process: a binary upgrade's new agent, started
// inside the unit, becomes its main process before the old one exits (the
// unit needs NotifyAccess=all for systemd to take it from a non-main pid).
void notify_ready_as_main();
void notify_reloading();
void notify_stopping();  // sent once, however often it is called

}  // namespace offload
