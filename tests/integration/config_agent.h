// The agent run with a TOML config file (the form users write), for tests of
// listeners and groups: its listeners' ports in config order, its stats.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "rig.h"

namespace rig {

// A counter of listener `index` in a stats document (its "listeners" array).
inline int64_t listener_counter(const rig::Json& doc, size_t index, const std::string& name) {
  const rig::Json* list = doc.get("listeners");
  REQUIRE(list != nullptr);
  REQUIRE(list->array.size() > index);
  return list->array[index].int_or(name, -1);
}

class ConfigAgent {
 public:
  ~ConfigAgent() {
    child_.stop();
    if (!file_.empty()) ::unlink(file_.c_str());
  }
  void start(const std::string& toml, size_t listeners) {
    char path[] = "/tmp/offload-topology-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    file_ = path;
    std::ofstream(file_) << toml;
    REQUIRE(child_.start(rig::agent_path(), {"run", "-c", file_, "--admin", "127.0.0.1:0"}));
    // The admin line comes after every listener's line.
    auto admin = child_.wait_for_line("offload-agent: admin on ", 15000);
    REQUIRE_MESSAGE(admin, child_.stderr_text());
    admin_ = port_of(*admin);
    for (const std::string& line : child_.stderr_lines())
      if (line.find("offload-agent: listening on ") != std::string::npos) ports_.push_back(port_of(line));
    REQUIRE(ports_.size() == listeners);
  }
  uint16_t port(size_t i) const { return ports_.at(i); }
  const std::string& file() const { return file_; }  // the TOML file it runs from
  uint16_t admin_port() const { return admin_; }
  // Replaces the file's text (for a reload to read).
  void rewrite(const std::string& toml) {
    const std::string next = file_ + ".next";
    std::ofstream(next) << toml;
    REQUIRE(::rename(next.c_str(), file_.c_str()) == 0);  // whole: a reload never reads half a file
  }
  // /stats?format=json, parsed.
  rig::Json stats() {
    rig::Client c;
    REQUIRE(c.connect(admin_));
    REQUIRE(c.send_all("GET /stats?format=json HTTP/1.1\r\nHost: a\r\n\r\n"));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    auto doc = rig::Json::parse(r.response->body);
    REQUIRE(doc);
    return *doc;
  }
  // A counter of listener `index` from the stats' "listeners" array.
  int64_t listener_stat(size_t index, const std::string& name) { return listener_counter(stats(), index, name); }
  // The "state" of server `name` in the stats ("up" or "down"; "?": no such server).
  std::string server_state(const std::string& name) { return server_entry(name).str_or("state", "?"); }
  // How many shards have the server out (the JSON's shards_down; -1: no such server).
  int64_t shards_down(const std::string& name) { return server_entry(name).int_or("shards_down", -1); }
  rig::Child& child() { return child_; }

 private:
  // Server `name`'s object in the stats' "servers" array; empty when there is none.
  rig::Json server_entry(const std::string& name) {
    rig::Json doc = stats();
    const rig::Json* servers = doc.get("servers");
    REQUIRE(servers != nullptr);
    for (const rig::Json& s : servers->array)
      if (s.str_or("server", "") == name) return s;
    return {};
  }
  static uint16_t port_of(const std::string& line) {
    return uint16_t(std::stoi(line.substr(line.rfind(':') + 1)));
  }
  rig::Child child_;
  std::string file_;
  std::vector<uint16_t> ports_;
  uint16_t admin_ = 0;
};

}  // namespace rig
