#include "xdp_guard.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "bpf/xdp_guard.h"
#include "cidr.h"
#include "pinned_maps.h"
#include "xdp_guard.skel.h"

namespace offload::xdp {

namespace {

constexpr unsigned long kBpfFsMagic = 0xcafe4a11;
constexpr int kCapNetAdmin = 12;
constexpr int kCapSysAdmin = 21;
constexpr int kCapBpf = 39;

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

int libbpf_print(enum libbpf_print_level level, const char* format, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  return std::vfprintf(stderr, format, args);
}

int libbpf_silent(enum libbpf_print_level, const char*, va_list) { return 0; }

bool is_bpffs(const std::string& path) {
  struct statfs fs {};
  return statfs(path.c_str(), &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kBpfFsMagic;
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
}

std::string load_failure(int err) {
  if (err == -EPERM || err == -EACCES) {
    return fmt::format("cannot load the XDP guard: {} (needs root, or CAP_BPF and CAP_NET_ADMIN)",
                       errno_text(err));
  }
  return fmt::format("cannot load the XDP guard: {} (set OFFLOAD_BPF_DEBUG=1 for libbpf's log)",
                     errno_text(err));
}

}  // namespace

const char* mode_name(Mode mode) {
  switch (mode) {
    case Mode::native: return "native";
    case Mode::generic: return "generic";
    case Mode::automatic: break;
  }
  return "auto";
}

void quiet_libbpf() {
  const char* debug = std::getenv("OFFLOAD_BPF_DEBUG");
  libbpf_set_print(debug && *debug && *debug != '0' ? libbpf_print : libbpf_silent);
}

bool have_bpf_privilege() {
  if (geteuid() == 0) return true;
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    const uint64_t caps = std::strtoull(line.c_str() + 7, nullptr, 16);
    const auto has = [caps](int cap) { return (caps >> cap) & 1; };
    return has(kCapNetAdmin) && (has(kCapBpf) || has(kCapSysAdmin));
  }
  return false;
}

Status ensure_bpffs(const std::string& pin_dir,
                    const std::function<void(std::string_view)>& announce) {
  const std::string parent = parent_dir(pin_dir);
  if (is_bpffs(parent)) return Status::success();
  if (parent != "/sys/fs/bpf") {
    return Status::failure(fmt::format("{} is not on a bpffs; cannot pin there", pin_dir));
  }
  mkdir(parent.c_str(), 0700);  // usually exists in sysfs already
  if (mount("bpf", parent.c_str(), "bpf", 0, "mode=0700") != 0) {
    return Status::failure(fmt::format("cannot mount bpffs at {}: {}", parent, errno_text(errno)));
  }
  if (announce) announce(fmt::format("xdp: mounted bpffs at {}", parent));
  return Status::success();
}

Status validate(const GuardConfig& config) {
  if (config.ifname.empty() || config.ifname.size() >= IF_NAMESIZE) {
    return Status::bad_input(fmt::format("bad interface name '{}'", config.ifname));
  }
  if (config.cpus.size() > XG_MAX_AGENT_CPUS) {
    return Status::bad_input(fmt::format("at most {} steering CPUs", XG_MAX_AGENT_CPUS));
  }
  const int possible = libbpf_num_possible_cpus();
  for (uint32_t cpu : config.cpus) {
    if (possible > 0 && cpu >= uint32_t(possible)) {
      return Status::bad_input(
          fmt::format("--cpu {}: no such CPU (this machine has CPUs 0 to {})", cpu, possible - 1));
    }
  }
  if (config.ports.size() > XG_MAX_SERVICE_PORTS) {
    return Status::bad_input(fmt::format("at most {} service ports", XG_MAX_SERVICE_PORTS));
  }
  for (uint16_t port : config.ports) {
    if (port == 0) return Status::bad_input("service port 0 is not a port");
  }
  if (config.syn_burst != 0 && config.syn_rate == 0) {
    return Status::bad_input("--syn-burst needs --syn-rate");
  }
  std::string error;
  for (const auto& cidr : config.allow) {
    if (!parse_prefix(cidr, error)) return Status::bad_input(error);
  }
  return Status::success();
}

std::unique_ptr<Guard> Guard::attach(const GuardConfig& config, Status& status) {
  quiet_libbpf();
  status = validate(config);
  if (!status.ok()) return nullptr;
  std::unique_ptr<Guard> guard(new Guard());
  guard->ifname_ = config.ifname;
  guard->pin_dir_ = config.pin_dir;
  guard->announce_ = config.announce;
  guard->ifindex_ = int(if_nametoindex(config.ifname.c_str()));
  if (guard->ifindex_ == 0) {
    status = Status::failure(fmt::format("no interface named '{}'", config.ifname));
    return nullptr;
  }
  if (!have_bpf_privilege()) {
    status = Status::failure("permission denied: attaching XDP needs root (or CAP_BPF and "
                             "CAP_NET_ADMIN)");
    return nullptr;
  }
  for (auto step : {&Guard::load, &Guard::fill_maps}) {
    status = (guard.get()->*step)(config);
    if (!status.ok()) return nullptr;
  }
  status = guard->pin_maps();
  if (!status.ok()) return nullptr;
  status = guard->attach_link(config);
  if (!status.ok()) return nullptr;
  return guard;
}

Status Guard::load(const GuardConfig& config) {
  if (!config.pin_dir.empty()) {
    Status mounted = ensure_bpffs(config.pin_dir, announce_);
    if (!mounted.ok()) return mounted;
    const std::string link_pin = config.pin_dir + "/" + XG_LINK_PIN;
    if (access(link_pin.c_str(), F_OK) == 0) {
      return Status::failure(fmt::format("the XDP guard is already attached ({} exists); run "
                                         "`detach` first", link_pin));
    }
  }
  uint32_t prog_id = 0;
  if (bpf_xdp_query_id(ifindex_, 0, &prog_id) == 0 && prog_id != 0) {
    return Status::failure(fmt::format("{} already has an XDP program (id {}) attached",
                                       ifname_, prog_id));
  }
  skel_ = xdp_guard__open();
  if (!skel_) return Status::failure(load_failure(-errno));
  const int possible = libbpf_num_possible_cpus();
  if (possible > 0) bpf_map__set_max_entries(skel_->maps.xdp_cpu_map, uint32_t(possible));
  const int err = xdp_guard__load(skel_);
  if (err) return Status::failure(load_failure(err));
  return Status::success();
}

Status Guard::fill_maps(const GuardConfig& config) {
  xg_config cfg{};
  cfg.ifindex = uint32_t(ifindex_);
  std::snprintf(cfg.ifname, sizeof(cfg.ifname), "%s", ifname_.c_str());
  cfg.allow_only = config.allow_only ? 1 : 0;
  cfg.syn_rate = config.syn_rate;
  cfg.syn_burst = config.syn_rate ? (config.syn_burst ? config.syn_burst : config.syn_rate) : 0;
  for (uint32_t cpu : config.cpus) {
    bpf_cpumap_val value{};
    value.qsize = XG_CPUMAP_QSIZE;
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.xdp_cpu_map), &cpu, &value, 0) != 0) {
      announce(fmt::format("xdp: cannot steer to CPU {} ({}); its share of service traffic "
                           "stays on the receiving CPU", cpu, errno_text(errno)));
      continue;
    }
    cfg.cpus[cfg.cpu_count++] = cpu;
  }
  const uint32_t zero = 0;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.xdp_config), &zero, &cfg, 0) != 0) {
    return Status::failure(fmt::format("cannot write xdp_config: {}", errno_text(errno)));
  }
  PinnedMaps maps(skel_);
  for (uint16_t port : config.ports) {
    Status added = maps.add_service_port(port);
    if (!added.ok()) return added;
  }
  std::string error;
  for (const auto& cidr : config.allow) {
    Status added = maps.add(SetKind::allow, *parse_prefix(cidr, error));
    if (!added.ok()) return added;
  }
  return Status::success();
}

Status Guard::pin_maps() {
  if (pin_dir_.empty()) return Status::success();
  if (mkdir(pin_dir_.c_str(), 0600) == 0) {
    dir_created_ = true;
  } else if (errno != EEXIST) {
    return Status::failure(fmt::format("cannot create {}: {}", pin_dir_, errno_text(errno)));
  }
  bpf_map* map = nullptr;
  bpf_object__for_each_map(map, skel_->obj) {
    const std::string path = pin_dir_ + "/" + bpf_map__name(map);
    if (unlink(path.c_str()) == 0) {
      announce(fmt::format("xdp: replaced the stale pin {}", path));
    }
    if (bpf_obj_pin(bpf_map__fd(map), path.c_str()) != 0) {
      return Status::failure(fmt::format("cannot pin {}: {}", path, errno_text(errno)));
    }
    pins_.push_back(path);
    chmod(path.c_str(), 0600);
  }
  return Status::success();
}

Status Guard::attach_link(const GuardConfig& config) {
  const int prog = bpf_program__fd(skel_->progs.xdp_guard);
  auto try_mode = [&](Mode mode) {
    LIBBPF_OPTS(bpf_link_create_opts, opts);
    opts.flags = mode == Mode::native ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE;
    link_fd_ = bpf_link_create(prog, ifindex_, BPF_XDP, &opts);
    if (link_fd_ >= 0) mode_ = mode;
    return link_fd_ >= 0 ? 0 : -errno;
  };
  int err = try_mode(config.mode == Mode::generic ? Mode::generic : Mode::native);
  if (err && config.mode == Mode::automatic && err != -EBUSY && err != -EEXIST) {
    announce(fmt::format("xdp: native mode unavailable on {} ({}); using generic mode",
                         ifname_, errno_text(err)));
    err = try_mode(Mode::generic);
  }
  if (err) {
    const char* hint = err == -EBUSY || err == -EEXIST ? " (another XDP program is attached)" : "";
    return Status::failure(fmt::format("cannot attach XDP in {} mode to {}: {}{}",
                                       mode_name(config.mode == Mode::generic ? Mode::generic
                                                                              : Mode::native),
                                       ifname_, errno_text(err), hint));
  }
  if (pin_dir_.empty()) return Status::success();
  const std::string path = pin_dir_ + "/" + XG_LINK_PIN;
  if (bpf_obj_pin(link_fd_, path.c_str()) != 0) {
    return Status::failure(fmt::format("cannot pin {}: {}", path, errno_text(errno)));
  }
  pins_.push_back(path);
  chmod(path.c_str(), 0600);
  return Status::success();
}

int Guard::prog_fd() const { return skel_ ? bpf_program__fd(skel_->progs.xdp_guard) : -1; }

void Guard::announce(const std::string& line) const {
  if (announce_) {
    announce_(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

Guard::~Guard() {
  if (!persisted_) {
    if (link_fd_ >= 0) bpf_link_detach(link_fd_);
    for (auto it = pins_.rbegin(); it != pins_.rend(); ++it) unlink(it->c_str());
    if (dir_created_) rmdir(pin_dir_.c_str());
  }
  if (link_fd_ >= 0) close(link_fd_);
  xdp_guard__destroy(skel_);
}

}  // namespace offload::xdp

namespace offload::xdp {

namespace {

// The interface index of the pinned link; 0 when the link outlived its interface.
struct PinnedLink {
  int fd = -1;
  int ifindex = 0;
  ~PinnedLink() {
    if (fd >= 0) close(fd);
  }
};

Status open_link(const std::string& pin_dir, PinnedLink& link) {
  const std::string path = pin_dir + "/" + XG_LINK_PIN;
  link.fd = bpf_obj_get(path.c_str());
  if (link.fd < 0) {
    const int err = errno;
    if (err == ENOENT) return Status::failure(fmt::format("no XDP guard is attached ({} is missing)", path));
    if (err == EACCES || err == EPERM) {
      return Status::failure(fmt::format("permission denied opening {}: needs root", path));
    }
    return Status::failure(fmt::format("cannot open {}: {}", path, errno_text(err)));
  }
  bpf_link_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(link.fd, &info, &len) != 0 || info.type != BPF_LINK_TYPE_XDP) {
    return Status::failure(fmt::format("{} is not an XDP link", path));
  }
  link.ifindex = int(info.xdp.ifindex);
  return Status::success();
}

std::string interface_name(int ifindex) {
  char name[IF_NAMESIZE] = {};
  return if_indextoname(unsigned(ifindex), name) ? name : fmt::format("ifindex {}", ifindex);
}

void remove_pins(const std::string& pin_dir) {
  unlink((pin_dir + "/" + XG_LINK_PIN).c_str());
  for (int map = 0; map < PinnedMaps::kMapCount; ++map) {
    unlink((pin_dir + "/" + PinnedMaps::name(PinnedMaps::Map(map))).c_str());
  }
  rmdir(pin_dir.c_str());  // only when empty: other programs pin here too
}

}  // namespace

Status detach(const std::string& ifname, const std::string& pin_dir) {
  quiet_libbpf();
  if (!have_bpf_privilege()) {
    return Status::failure("permission denied: detaching XDP needs root (or CAP_BPF and "
                           "CAP_NET_ADMIN)");
  }
  const int ifindex = int(if_nametoindex(ifname.c_str()));
  PinnedLink link;
  Status status = open_link(pin_dir, link);
  if (!status.ok()) {
    if (ifindex == 0) return Status::failure(fmt::format("no interface named '{}'", ifname));
    if (status.message.rfind("no XDP guard", 0) == 0) {
      return Status::failure(fmt::format("no XDP guard is attached to {} ({}/{} is missing)",
                                         ifname, pin_dir, XG_LINK_PIN));
    }
    return status;
  }
  if (link.ifindex != 0) {  // 0: the interface is gone; the pins are all that is left
    if (ifindex == 0) return Status::failure(fmt::format("no interface named '{}'", ifname));
    if (link.ifindex != ifindex) {
      return Status::failure(fmt::format("the XDP guard is attached to {}, not {}",
                                         interface_name(link.ifindex), ifname));
    }
    if (bpf_link_detach(link.fd) != 0) {
      return Status::failure(fmt::format("cannot detach from {}: {}", ifname, errno_text(errno)));
    }
  }
  remove_pins(pin_dir);
  return Status::success();
}

std::string attached_interface(const std::string& pin_dir) {
  PinnedLink link;
  if (!open_link(pin_dir, link).ok()) return "";
  return link.ifindex ? interface_name(link.ifindex) : "(interface gone)";
}

}  // namespace offload::xdp
