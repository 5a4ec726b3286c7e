#pragma once
// Loads the XDP guard (no attach) and runs frames through it with BPF_PROG_TEST_RUN.

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bpf/xdp_guard.h"
#include "cidr.h"
#include "pinned_maps.h"
#include "xdp_guard.h"
#include "xdp_guard.skel.h"

namespace offload::test {

using Counters = std::array<uint64_t, XG_REASON_MAX>;

class GuardHarness {
 public:
  GuardHarness() {
    xdp::quiet_libbpf();
    skel_ = xdp_guard__open();
    if (!skel_) throw std::runtime_error("xdp_guard__open failed");
    bpf_map__set_max_entries(skel_->maps.xdp_cpu_map, uint32_t(libbpf_num_possible_cpus()));
    if (int err = xdp_guard__load(skel_)) {
      xdp_guard__destroy(skel_);
      throw std::runtime_error("xdp_guard__load failed: " + std::to_string(err));
    }
    maps_ = std::make_unique<xdp::PinnedMaps>(skel_);
  }
  ~GuardHarness() {
    maps_.reset();
    xdp_guard__destroy(skel_);
  }
  GuardHarness(const GuardHarness&) = delete;
  GuardHarness& operator=(const GuardHarness&) = delete;

  xdp::PinnedMaps& maps() { return *maps_; }
  int prog_fd() const { return bpf_program__fd(skel_->progs.xdp_guard); }

  void configure(const xg_config& config) {
    const uint32_t zero = 0;
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.xdp_config), &zero, &config, 0) != 0) {
      throw std::runtime_error("cannot write xdp_config");
    }
  }
  // Creates the cpumap entry for `cpu`, so that a redirect to it can succeed.
  void enable_cpu(uint32_t cpu) {
    bpf_cpumap_val value{};
    value.qsize = 256;
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.xdp_cpu_map), &cpu, &value, 0) != 0) {
      throw std::runtime_error("cannot add cpu_map entry");
    }
  }
  void deny(const char* cidr) { change(xdp::SetKind::deny, cidr); }
  void allow(const char* cidr) { change(xdp::SetKind::allow, cidr); }
  uint64_t deny_hits(const char* cidr) {
    for (const auto& entry : maps_->list(xdp::SetKind::deny)) {
      if (entry.prefix.str() == cidr) return entry.packets;
    }
    throw std::runtime_error(std::string("not in the deny set: ") + cidr);
  }
  xg_port_stats port(uint16_t number) {
    for (const auto& p : maps_->ports()) {
      if (p.port == number) return p.counters;
    }
    return {};
  }

  // Runs one frame; returns the XDP action, or -errno when the kernel refused the run.
  int run(const std::vector<uint8_t>& frame, uint32_t repeat = 1, uint32_t* duration_ns = nullptr) {
    LIBBPF_OPTS(bpf_test_run_opts, opts);
    opts.data_in = frame.data();
    opts.data_size_in = uint32_t(frame.size());
    opts.repeat = repeat;
    if (bpf_prog_test_run_opts(prog_fd(), &opts) != 0) return -errno;
    if (duration_ns) *duration_ns = opts.duration;
    return int(opts.retval);
  }
  Counters counters() const { return maps_->counters(); }

 private:
  void change(xdp::SetKind set, const char* cidr) {
    std::string error;
    auto prefix = xdp::parse_prefix(cidr, error);
    if (!prefix) throw std::invalid_argument(error);
    auto status = maps_->add(set, *prefix);
    if (!status.ok()) throw std::runtime_error(status.message);
  }

  xdp_guard* skel_ = nullptr;
  std::unique_ptr<xdp::PinnedMaps> maps_;
};

}  // namespace offload::test
