// Binary upgrade: the running agent hands its listening sockets to a new
// process over a Unix socket, as HAProxy's `-x` (a stats socket with
// `expose-fd listeners`) does. The running agent serves them on
// `takeover_socket = PATH`; the new one, `offload-agent run --takeover PATH`
// (or `-x PATH`), receives every shard's socket of every listener and the
// admin endpoint's, starts its shards on them, and once it is serving
// tells the old one to drain: it stops accepting (its accepts cancelled,
// never the sockets shut: they are the same sockets the new one accepts
// on), finishes what it has within drain_timeout_ms and exits 0. A
// connection in an accept queue is never lost: the queue is the socket's,
// and the socket lives on in the new process.
//
// The exchange, over SOCK_SEQPACKET (one record a message, a socket
// attached to its own record), every line "WORD key=value ...":
//   old → new  offload-takeover version=1 pid=P agent=VERSION shards=N sockets=K
//              K × socket kind=listener shard=S listener=J name=N address=A range=L   (+ its fd)
//                  socket kind=admin address=A                                     (+ its fd)
//              end
//          or  refuse why=...        (an shm: group, another takeover under way)
//   new → old  drain kept=I,J,...    (the indexes of the sockets it serves)
//   old → new  draining              (it has stopped taking work)
//              cancelled             (its accepts are off the kept sockets: the new
//                                     shards re-arm theirs, see Shard::request_rearm)
// A new agent that leaves before `drain` (it failed to start, its config
// was refused) leaves the old one serving as before. Addresses are text
// (the configured ones, ":0" as ":0"), so versions that lay out their
// structures differently still understand each other.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ops/config.h"
#include "proxy/listen_sockets.h"

namespace offload {
class Generation;
}

namespace offload::takeover {

constexpr int kProtocol = 1;  // the exchange's version, in its first record

// One socket handed over and what identifies it.
struct Socket {
  bool admin = false;     // the admin endpoint's listener; else one shard's socket of one listener
  uint32_t shard = 0;
  uint32_t listener = 0;  // its index in the old agent's listeners
  std::string name;
  SocketAddress address;  // as configured (":0" stays ":0": a port-0 listener matches its own)
  uint16_t port_last = 0;
  int fd = -1;
};

// What the old agent offers: every shard's socket of every listener of its
// newest generation, then the admin endpoint's listener (if it has one).
// The plan's sockets in the agent's shape (one per listener and shard; a
// listener with none handed over gets an empty list, to be opened).
AgentSockets as_sockets(const std::vector<std::vector<int>>& fds);

std::vector<Socket> offer_of(const Generation& running, int admin_fd, const std::string& admin_address);

// ------------------------------------------------------ the running agent

class Server {
 public:
  // Listens on `path` (mode 0600; only this user and root may connect). A
  // file already there is replaced atomically (rename), so a new agent that
  // took over becomes the one at the path; a stale one is simply replaced.
  // Throws ConfigError naming takeover_socket.
  explicit Server(const std::string& path);
  ~Server();  // unlinks the path only while it is still this server's
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int listen_fd() const { return listen_fd_; }
  int conn_fd() const { return conn_fd_; }
  // The sockets are given out and the new agent has not finished: the
  // running agent must not shut them (a reload, SIGTERM's drain would stop
  // the new agent's listening too).
  bool busy() const { return conn_fd_ >= 0; }
  bool draining() const { return draining_; }

  // listen_fd() is readable: accepts the new agent and sends it `offer`,
  // or `refusal` when that is not empty. A second new agent while one is
  // under way is refused. Returns a line for the log.
  std::string accept_one(const std::vector<Socket>& offer, uint32_t shards, const std::string& refusal);

  struct Request {
    enum class Kind { kNothing, kDrain, kGone } kind = Kind::kNothing;
    std::vector<int> kept;  // kDrain: the offered descriptors the new agent serves
    std::string why;        // kGone: what happened
  };
  // conn_fd() is readable.
  Request read_request();
  void say_draining();
  void say_cancelled();  // and ends the exchange

 private:
  void drop();

  std::string path_;
  ino_t inode_ = 0;
  dev_t device_ = 0;
  int listen_fd_ = -1;
  int conn_fd_ = -1;
  std::vector<int> offered_;  // the descriptors sent, by index
  bool draining_ = false;
};

// ---------------------------------------------------------- the new agent

struct Offer {
  pid_t pid = 0;
  std::string agent;  // its version
  uint32_t shards = 0;
  std::vector<Socket> sockets;  // each fd now this process's
};

// Which offered sockets a configuration serves.
struct Plan {
  std::vector<std::vector<int>> fds;  // per shard, per listener; -1: to be opened
  int admin_fd = -1;                  // the old admin listener, when the address is the same
  std::vector<size_t> kept;           // indexes into Offer::sockets
  std::string summary;                // "3 sockets taken over, 1 closed, 2 to open"
};
// Matches by address (the configured one, or the socket's bound address)
// and range, and by shard index. More shards than the old agent: the extra
// ones open their own sockets, which join the same SO_REUSEPORT group.
// Fewer: refused (ConfigError), since the old shards' sockets left over
// would be closed with what is queued on them. The sockets not kept are
// closed here; on a throw, all of them.
Plan plan(const Config& config, Offer& offer);

class Client {
 public:
  // Connects to the agent serving `path`; null with `why` when none does
  // (no such file, nobody listening): the caller binds fresh.
  static std::unique_ptr<Client> connect(const std::string& path, std::string& why);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Reads the offer, each read bounded. Throws std::runtime_error
  // ("takeover: ...") when the old agent refuses or says something else.
  Offer receive();
  // Tells the old agent to drain and waits (bounded) until its accepts are
  // off the kept sockets. Returns a line for the log.
  std::string drain(const Offer& offer, const std::vector<size_t>& kept);

 private:
  explicit Client(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

// `run --takeover PATH`: the offer received and planned for `config`. No
// client (`line` says why): nobody serves PATH, the listeners are bound
// fresh. Throws (ConfigError for a configuration that cannot take over,
// std::runtime_error for the exchange) with the old agent left serving.
struct Start {
  std::unique_ptr<Client> client;
  Offer offer;
  Plan plan;
  std::string line;
};
Start begin(const std::string& path, const Config& config);

// SIGUSR2 (nginx's signal for the same): starts `exe` (the agent's binary
// path as it was at start-up: after a package upgrade, the new binary) with
// this agent's `args` and --takeover PATH (any --takeover / -x among them
// replaced), as a child of this process: in its cgroup, so in its systemd
// unit. Only stdin, stdout and stderr go with it. Returns its pid once the
// exec has happened, or -1 with `why`.
pid_t spawn_successor(const std::string& exe, const std::vector<std::string>& args, const std::string& path,
                      std::string& why);

}  // namespace offload::takeover
