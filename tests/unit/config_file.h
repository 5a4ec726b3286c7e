// What the config tests share: a TOML text loaded as `run -c FILE` loads it
// (the file, then the flags as main applies them, then validate()), and the
// one-line error it gives.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "ops/config.h"

namespace config_test {

inline std::string write_file(const std::string& text) {
  char path[] = "/tmp/offload-config-test-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << text;
  return path;
}

inline offload::Config load(const std::string& toml, const std::vector<std::string>& listen_flags = {},
                            const std::string& upstream_flag = "") {
  std::string path = write_file(toml);
  offload::Config c;
  try {
    offload::load_config_file(path, c);
    offload::apply_listen_flags(c, listen_flags);
    offload::apply_upstream_flag(c, upstream_flag);
    offload::validate(c);
  } catch (...) {
    std::remove(path.c_str());
    throw;
  }
  std::remove(path.c_str());
  return c;
}

inline std::string error_of(const std::string& toml, const std::vector<std::string>& listen_flags = {},
                            const std::string& upstream_flag = "") {
  try {
    load(toml, listen_flags, upstream_flag);
  } catch (const offload::ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace config_test
