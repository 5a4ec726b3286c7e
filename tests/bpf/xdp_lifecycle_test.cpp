// Guard's lifecycle on real interfaces in a private network namespace: what attach creates
// (program on the interface, pins, modes) and that the destructor or detach removes all of it.
// The process also has a mount namespace of its own, so that whether /sys/fs/bpf is a bpffs
// is the test's choice, not the host's: attach mounts it where it is missing, and says so.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <doctest/doctest.h>
#include <linux/if_link.h>
#include <linux/magic.h>
#include <net/if.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "bpf/xdp_guard.h"
#include "pinned_maps.h"
#include "xdp_guard.h"

namespace offload::xdp {
namespace {

constexpr const char* kBpffs = "/sys/fs/bpf";

std::string test_pin_dir() { return "/sys/fs/bpf/offload-test-" + std::to_string(getpid()); }

bool is_bpffs(const char* path) {
  struct statfs fs {};
  return statfs(path, &fs) == 0 && static_cast<unsigned long>(fs.f_type) == BPF_FS_MAGIC;
}

// Takes bpffs away from /sys/fs/bpf, in our mount namespace only (stacked mounts too).
void unmount_bpffs() {
  for (int i = 0; i < 8 && is_bpffs(kBpffs); ++i) REQUIRE(umount2(kBpffs, MNT_DETACH) == 0);
  REQUIRE_FALSE(is_bpffs(kBpffs));
}

// Once per process: network and mount namespaces of our own, with lo (no native XDP) and a
// veth pair, and a bpffs at /sys/fs/bpf whether or not the host has one mounted (the test
// that needs it missing unmounts it). Nothing mounted here reaches the host.
void enter_private_netns() {
  static bool entered = false;
  if (entered) return;
  REQUIRE(unshare(CLONE_NEWNET | CLONE_NEWNS) == 0);
  REQUIRE(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
  REQUIRE(std::system("ip link set lo up && ip link add xg1 type veth peer name xg2 && "
                      "ip link set xg1 up && ip link set xg2 up") == 0);
  const Status mounted = ensure_bpffs(test_pin_dir(), nullptr);
  REQUIRE_MESSAGE(mounted.ok(), mounted.message);
  REQUIRE(is_bpffs(kBpffs));
  entered = true;
}

const std::vector<std::string>& all_pins() {
  static const std::vector<std::string> pins = [] {
    std::vector<std::string> names{XG_LINK_PIN};
    for (int map = 0; map < PinnedMaps::kMapCount; ++map) {
      names.emplace_back(PinnedMaps::name(PinnedMaps::Map(map)));
    }
    return names;
  }();
  return pins;
}

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

unsigned mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

uint32_t attached_prog(const char* ifname, int flags = 0) {
  uint32_t id = 0;
  bpf_xdp_query_id(int(if_nametoindex(ifname)), flags, &id);
  return id;
}

uint32_t prog_id(int fd) {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  REQUIRE(bpf_obj_get_info_by_fd(fd, &info, &len) == 0);
  return info.id;
}

struct Announced {
  std::vector<std::string> lines;
  GuardConfig config(const char* ifname) {
    GuardConfig c;
    c.ifname = ifname;
    c.pin_dir = test_pin_dir();
    c.announce = [this](std::string_view line) { lines.emplace_back(line); };
    return c;
  }
};

void require_nothing_left(const char* ifname) {
  for (const auto& pin : all_pins()) CHECK_MESSAGE(!exists(test_pin_dir() + "/" + pin), pin);
  CHECK(!exists(test_pin_dir()));
  CHECK(attached_prog(ifname) == 0);
}

}  // namespace

TEST_CASE("attach creates program, pins and config; the destructor removes exactly that") {
  enter_private_netns();
  Announced announced;
  GuardConfig config = announced.config("xg1");
  config.ports = {8080, 8443};
  config.cpus = {0};
  config.syn_rate = 100;
  config.allow = {"192.168.0.0/16"};
  {
    Status status;
    auto guard = Guard::attach(config, status);
    REQUIRE_MESSAGE(guard, status.message);
    CHECK(guard->mode() == Mode::native);  // veth has native XDP
    CHECK(announced.lines.empty());
    CHECK(attached_prog("xg1", XDP_FLAGS_DRV_MODE) == prog_id(guard->prog_fd()));
    CHECK(mode_of(test_pin_dir()) == 0600);
    for (const auto& pin : all_pins()) {
      REQUIRE_MESSAGE(exists(test_pin_dir() + "/" + pin), pin);
      CHECK_MESSAGE(mode_of(test_pin_dir() + "/" + pin) == 0600, pin);
    }
    auto maps = PinnedMaps::open(test_pin_dir(), status);
    REQUIRE_MESSAGE(maps, status.message);
    const xg_config cfg = maps->config();
    CHECK(std::string(cfg.ifname) == "xg1");
    CHECK(cfg.syn_rate == 100);
    CHECK(cfg.syn_burst == 100);  // defaults to the rate
    CHECK(cfg.cpu_count == 1);
    CHECK(maps->ports().size() == 2);
    REQUIRE(maps->list(SetKind::allow).size() == 1);
    CHECK(maps->list(SetKind::allow)[0].prefix.str() == "192.168.0.0/16");
  }
  require_nothing_left("xg1");
}

TEST_CASE("attach mounts bpffs at /sys/fs/bpf where it is missing, and says so once") {
  enter_private_netns();
  unmount_bpffs();
  Announced announced;
  Status status;
  auto guard = Guard::attach(announced.config("xg1"), status);
  REQUIRE_MESSAGE(guard, status.message);
  REQUIRE(announced.lines.size() == 1);
  CHECK(announced.lines[0] == "xdp: mounted bpffs at /sys/fs/bpf");
  CHECK(is_bpffs(kBpffs));
  for (const auto& pin : all_pins()) CHECK_MESSAGE(exists(test_pin_dir() + "/" + pin), pin);
  guard.reset();
  require_nothing_left("xg1");

  // Mounted now: the next attach finds it and says nothing.
  guard = Guard::attach(announced.config("xg1"), status);
  REQUIRE_MESSAGE(guard, status.message);
  CHECK(announced.lines.size() == 1);
  guard.reset();
  require_nothing_left("xg1");
}

TEST_CASE("automatic mode falls back to generic where native is missing, and says so once") {
  enter_private_netns();
  Announced announced;
  Status status;
  auto guard = Guard::attach(announced.config("lo"), status);
  REQUIRE_MESSAGE(guard, status.message);
  CHECK(guard->mode() == Mode::generic);
  REQUIRE(announced.lines.size() == 1);
  CHECK(announced.lines[0].find("native mode unavailable on lo") != std::string::npos);
  CHECK(attached_prog("lo", XDP_FLAGS_SKB_MODE) == prog_id(guard->prog_fd()));
  guard.reset();
  require_nothing_left("lo");
}

TEST_CASE("failures leave nothing behind and say why") {
  enter_private_netns();
  Announced announced;
  Status status;
  SUBCASE("native mode where the driver has none") {
    GuardConfig config = announced.config("lo");
    config.mode = Mode::native;
    CHECK_FALSE(Guard::attach(config, status));
    CHECK(status.exit_code == kExitFailure);
    CHECK(status.message.find("cannot attach XDP in native mode to lo") != std::string::npos);
    require_nothing_left("lo");
  }
  SUBCASE("a missing interface") {
    CHECK_FALSE(Guard::attach(announced.config("nosuch0"), status));
    CHECK(status.message == "no interface named 'nosuch0'");
    CHECK(!exists(test_pin_dir()));
  }
  SUBCASE("attaching twice") {
    auto first = Guard::attach(announced.config("xg1"), status);
    REQUIRE_MESSAGE(first, status.message);
    CHECK_FALSE(Guard::attach(announced.config("xg2"), status));
    CHECK(status.message.find("already attached") != std::string::npos);
    GuardConfig elsewhere = announced.config("xg1");
    elsewhere.pin_dir = test_pin_dir() + "-b";
    CHECK_FALSE(Guard::attach(elsewhere, status));
    CHECK(status.message.find("xg1 already has an XDP program") != std::string::npos);
    CHECK(!exists(elsewhere.pin_dir));
    CHECK(attached_prog("xg1") == prog_id(first->prog_fd()));  // the first is untouched
    first.reset();
    require_nothing_left("xg1");
  }
}

TEST_CASE("persist hands the guard to bpffs; detach takes it away") {
  enter_private_netns();
  Announced announced;
  Status status;
  auto guard = Guard::attach(announced.config("xg1"), status);
  REQUIRE_MESSAGE(guard, status.message);
  const uint32_t id = prog_id(guard->prog_fd());
  guard->persist();
  guard.reset();
  CHECK(attached_prog("xg1") == id);  // outlives its owner
  CHECK(exists(test_pin_dir() + "/" XG_LINK_PIN));

  status = detach("xg2", test_pin_dir());
  CHECK(status.message == "the XDP guard is attached to xg1, not xg2");
  status = detach("nosuch0", test_pin_dir());
  CHECK(status.message == "no interface named 'nosuch0'");
  CHECK(attached_prog("xg1") == id);

  status = detach("xg1", test_pin_dir());
  CHECK_MESSAGE(status.ok(), status.message);
  require_nothing_left("xg1");
  status = detach("xg1", test_pin_dir());
  CHECK(status.exit_code == kExitFailure);
  CHECK(status.message.find("no XDP guard is attached to xg1") != std::string::npos);
}

TEST_CASE("detach cleans up after an interface that disappeared") {
  enter_private_netns();
  REQUIRE(std::system("ip link add xg3 type veth peer name xg4 && ip link set xg3 up") == 0);
  Announced announced;
  Status status;
  auto guard = Guard::attach(announced.config("xg3"), status);
  REQUIRE_MESSAGE(guard, status.message);
  guard->persist();
  guard.reset();
  REQUIRE(std::system("ip link del xg3") == 0);
  status = detach("xg3", test_pin_dir());
  CHECK_MESSAGE(status.ok(), status.message);
  for (const auto& pin : all_pins()) CHECK_MESSAGE(!exists(test_pin_dir() + "/" + pin), pin);
  CHECK(!exists(test_pin_dir()));
}

}  // namespace offload::xdp
