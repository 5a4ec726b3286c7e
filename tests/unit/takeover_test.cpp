// The binary upgrade's parts (ops/takeover.h): the exchange over a real
// Unix socket in this process, the plan that matches offered sockets to a
// configuration, and the takeover_socket key.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "config_file.h"
#include "ops/config.h"
#include "ops/takeover.h"
#include "proxy/listener.h"

using config_test::error_of;
using config_test::load;
namespace takeover = offload::takeover;

namespace {

const std::string kGroup = "[[upstream]]\nservers = [\"tcp://127.0.0.1:9000\"]\n";

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// A listening socket of `text` ("127.0.0.1:0"), offered as shard `shard` of listener `listener`.
takeover::Socket offered(const std::string& text, uint32_t shard, uint32_t listener, const std::string& name) {
  takeover::Socket s;
  s.address = offload::parse_socket_address("listen", text);
  s.fd = offload::open_listener(s.address, 16);
  s.shard = shard;
  s.listener = listener;
  s.name = name;
  return s;
}

struct TempDir {
  std::string dir;
  TempDir() {
    char path[] = "/tmp/offload-takeover-test-XXXXXX";
    REQUIRE(::mkdtemp(path) != nullptr);
    dir = path;
  }
  ~TempDir() {
    ::unlink((dir + "/t.sock").c_str());
    ::rmdir(dir.c_str());
  }
};

}  // namespace

TEST_CASE("takeover_socket: loaded, shown by --show, and a relative path refused naming the key") {
  offload::Config c = load("takeover_socket = \"/run/offload/takeover.sock\"\n" + kGroup);
  CHECK(c.takeover_socket == "/run/offload/takeover.sock");
  CHECK(offload::format_config(c).find("takeover_socket = \"/run/offload/takeover.sock\"\n") != std::string::npos);
  CHECK(load(offload::format_config(c)).takeover_socket == c.takeover_socket);
  CHECK(offload::format_config(load(kGroup)).find("takeover_socket") == std::string::npos);  // unset: not shown
  CHECK(error_of("takeover_socket = \"run/t.sock\"\n" + kGroup) ==
        "takeover_socket: bad value 'run/t.sock' (expected an absolute path of at most 90 bytes, or \"\" for none)");
}

TEST_CASE("takeover plan: by configured address (:0 takes :0's socket), by bound address, by shard; the rest closed") {
  offload::Config c = load("workers = 3\n" + kGroup + "[[listener]]\nlisten = \"127.0.0.1:0\"\n"
                                    "[[listener]]\nlisten = \"127.0.0.1:0\"\nname = \"second\"\n");
  takeover::Offer offer;
  offer.shards = 2;
  offer.sockets.push_back(offered("127.0.0.1:0", 0, 0, "a"));
  offer.sockets.push_back(offered("127.0.0.1:0", 1, 0, "a"));
  offer.sockets.push_back(offered("127.0.0.1:0", 0, 1, "gone"));  // a second :0 listener: matches the second
  offer.sockets.push_back(offered("127.0.0.1:0", 1, 1, "gone"));
  const int a0 = offer.sockets[0].fd, a1 = offer.sockets[1].fd, b0 = offer.sockets[2].fd, b1 = offer.sockets[3].fd;
  takeover::Plan p = takeover::plan(c, offer);
  REQUIRE(p.fds.size() == 3);
  CHECK(p.fds[0] == std::vector<int>{a0, b0});
  CHECK(p.fds[1] == std::vector<int>{a1, b1});
  CHECK(p.fds[2] == std::vector<int>{-1, -1});  // the third shard opens its own
  CHECK(p.kept == std::vector<size_t>{0, 1, 2, 3});
  CHECK(p.admin_fd == -1);
  CHECK(p.summary == "4 sockets taken over, 0 closed (not in this configuration), 2 to open");
  for (int fd : {a0, a1, b0, b1}) ::close(fd);

  // The configuration names the port the old :0 socket was bound to; the other listener is gone.
  takeover::Offer again;
  again.shards = 1;
  again.sockets.push_back(offered("127.0.0.1:0", 0, 0, "old"));
  again.sockets.push_back(offered("127.0.0.1:0", 0, 1, "removed"));
  const std::string bound = offload::local_address(again.sockets[0].fd);
  offload::Config fixed = load(kGroup + "[[listener]]\nlisten = \"" + bound + "\"\n");
  const int kept = again.sockets[0].fd, removed = again.sockets[1].fd;
  takeover::Plan q = takeover::plan(fixed, again);
  CHECK(q.fds == std::vector<std::vector<int>>{{kept}});
  CHECK(q.kept == std::vector<size_t>{0});
  CHECK(is_open(kept));
  CHECK_FALSE(is_open(removed));
  CHECK(q.summary == "1 socket taken over, 1 closed (not in this configuration), 0 to open");
  ::close(kept);
}

TEST_CASE("takeover plan: fewer shards than offered is refused naming workers, and every offered socket closed") {
  offload::Config c = load(kGroup + "[[listener]]\nlisten = \"127.0.0.1:0\"\n");
  takeover::Offer offer;
  offer.shards = 2;
  offer.sockets.push_back(offered("127.0.0.1:0", 0, 0, "a"));
  offer.sockets.push_back(offered("127.0.0.1:0", 1, 0, "a"));
  const int a0 = offer.sockets[0].fd, a1 = offer.sockets[1].fd;
  std::string said;
  try {
    takeover::plan(c, offer);
  } catch (const offload::ConfigError& e) {
    said = e.what();
  }
  CHECK(said == "takeover: workers: 1 is fewer than the running agent's 2 shards (their other sockets would be "
                "closed with the connections queued on them; set workers = 2 or more, or stop and start)");
  CHECK_FALSE(is_open(a0));
  CHECK_FALSE(is_open(a1));
}

TEST_CASE("takeover exchange: the offer arrives whole (names with spaces), drain names the kept sockets") {
  TempDir d;
  const std::string path = d.dir + "/t.sock";
  takeover::Server server(path);
  std::vector<takeover::Socket> offer = {offered("127.0.0.1:0", 0, 0, "my listener=1 %"),
                                         offered("127.0.0.1:0", 1, 0, "my listener=1 %")};
  takeover::Socket admin = offered("127.0.0.1:0", 0, 0, "admin");
  admin.admin = true;
  offer.push_back(admin);

  std::string why;
  auto client = takeover::Client::connect(path, why);
  REQUIRE(client);
  // The records wait in the socket: the server sends them all before the client reads.
  CHECK(server.accept_one(offer, 2, "").find("3 sockets sent") != std::string::npos);
  CHECK(server.busy());
  takeover::Offer got = client->receive();
  CHECK(got.pid == ::getpid());
  CHECK(got.shards == 2);
  REQUIRE(got.sockets.size() == 3);
  CHECK(got.sockets[0].name == "my listener=1 %");
  CHECK(got.sockets[1].shard == 1);
  CHECK(got.sockets[2].admin);
  CHECK(offload::local_address(got.sockets[1].fd) == offload::local_address(offer[1].fd));  // the same socket

  // The new side waits for the old one's answers: on its own thread.
  std::string line;
  std::thread new_side([&] { line = client->drain(got, {0, 2}); });
  takeover::Server::Request r;
  for (int i = 0; i < 500 && r.kind == takeover::Server::Request::Kind::kNothing; ++i) {
    r = server.read_request();
    if (r.kind == takeover::Server::Request::Kind::kNothing) ::usleep(10000);
  }
  REQUIRE(r.kind == takeover::Server::Request::Kind::kDrain);
  CHECK(r.kept == std::vector<int>{offer[0].fd, offer[2].fd});
  CHECK(server.draining());
  server.say_draining();
  server.say_cancelled();
  new_side.join();
  CHECK(line.find("stopped accepting and drains") != std::string::npos);
  CHECK_FALSE(server.busy());
  for (auto& s : got.sockets) ::close(s.fd);
  for (auto& s : offer) ::close(s.fd);
}

TEST_CASE("takeover exchange: a refusal, and a path nobody serves") {
  TempDir d;
  const std::string path = d.dir + "/t.sock";
  std::string why;
  CHECK_FALSE(takeover::Client::connect(path, why));
  CHECK(why == "no agent at " + path + " (No such file or directory)");
  takeover::Server server(path);
  auto client = takeover::Client::connect(path, why);
  REQUIRE(client);
  CHECK(server.accept_one({}, 1, "an shm: group cannot be handed over yet").find("refused pid") != std::string::npos);
  CHECK_FALSE(server.busy());
  std::string said;
  try {
    client->receive();
  } catch (const std::exception& e) {
    said = e.what();
  }
  CHECK(said == "takeover: the agent at " + path + ": refused: an shm: group cannot be handed over yet");
}
