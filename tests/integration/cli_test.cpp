// The command line as a person meets it: --version, and --help that says
// what each flag does instead of sending the reader elsewhere.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "rig.h"

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <map>
#include <sstream>

namespace {

struct Run {
  int code = -1;
  std::string out;  // stdout (and stderr with `merge`)
};

// The agent with `args` (already shell-safe), its exit code and output.
Run agent(const std::string& args, bool merge = false) {
  const std::string command = rig::agent_path() + " " + args + (merge ? " 2>&1" : " 2>/dev/null");
  Run run;
  FILE* p = ::popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) run.out.append(buf, n);
  const int status = ::pclose(p);
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// "16k" → 16384, "auto" stays "auto": a default as the help writes it, in
// the form `check --show` prints it.
std::string normalized(std::string v) {
  while (!v.empty() && (v.back() == ')' || v.back() == ',' || v.back() == ';' || v.back() == '.')) v.pop_back();
  if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0]))) return v;
  uint64_t mult = 1;
  switch (v.back()) {
    case 'k': mult = 1ull << 10; break;
    case 'm': mult = 1ull << 20; break;
    case 'g': mult = 1ull << 30; break;
    default: break;
  }
  if (mult != 1) v.pop_back();
  return std::to_string(std::stoull(v) * mult);
}

}  // namespace

TEST_CASE("cli: --version prints the project version and exits 0") {
  Run r = agent("--version");
  CHECK(r.code == 0);
  CHECK(r.out == "offload-agent " OFFLOAD_EXPECTED_VERSION "\n");
}

TEST_CASE("cli: every flag's help says what it does and its default, and the defaults are the built-in ones") {
  // The configuration an empty file gives: the built-in defaults, as TOML.
  char path[] = "/tmp/offload-cli-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  Run shown = agent(std::string("check -c ") + path + " --show");
  ::unlink(path);
  REQUIRE(shown.code == 0);
  std::map<std::string, std::string> builtin;
  for (const std::string& line : lines_of(shown.out)) {
    if (line.starts_with("[")) break;  // the globals come first
    const size_t eq = line.find(" = ");
    if (eq != std::string::npos && line[0] != '#') builtin[line.substr(0, eq)] = line.substr(eq + 3);
  }
  REQUIRE(builtin.count("header_timeout_ms") == 1);

  for (const char* command : {"--help", "run --help", "check --help", "stats --help"}) {
    CAPTURE(command);
    Run help = agent(command);
    CHECK(help.code == 0);
    CHECK(help.out.find("see README") == std::string::npos);
    int flags = 0;
    const std::vector<std::string> lines = lines_of(help.out);
    // The descriptions' column: where the help flag's own starts.
    size_t col = 0;
    for (const std::string& line : lines)
      if (line.find("-h,--help") != std::string::npos) col = line.find("Print");
    REQUIRE(col != std::string::npos);
    REQUIRE(col > 0);
    for (size_t i = 0; i < lines.size(); ++i) {
      // An option line: "  --name TYPE   description" (CLI11's layout; a
      // long name has its description on the next line).
      const std::string& line = lines[i];
      const size_t start = line.find_first_not_of(' ');
      if (start == std::string::npos || start > 4 || line.compare(start, 1, "-") != 0) continue;
      CAPTURE(line);
      const std::string name = line.substr(start, line.find(' ', start) - start);
      if (name == "-h,--help") continue;
      ++flags;
      std::string what;
      if (line.size() > col && line[col - 1] == ' ') what = line.substr(col);
      else if (i + 1 < lines.size() && lines[i + 1].size() > col) what = lines[i + 1].substr(col);
      CHECK(what.size() >= 20);
      if (std::string_view(command) == "--help" || name == "--version") continue;
      // Every flag of run, check and stats says its default; a numeric
      // setting's default is the one the agent really has.
      const size_t d = what.rfind("default ");
      CHECK_MESSAGE(d != std::string::npos, "no default in the help");
      if (d == std::string::npos || !name.starts_with("--")) continue;
      std::string key = name.substr(2);
      for (char& ch : key)
        if (ch == '-') ch = '_';
      auto b = builtin.find(key);
      if (b == builtin.end() || !(std::isdigit(static_cast<unsigned char>(b->second[0])) || b->second == "\"auto\""))
        continue;  // the numbers, and max_upstream's and xdp_mode's auto
      std::string value = what.substr(d + 8);
      value = value.substr(0, value.find(' '));
      std::string want = b->second;
      if (want.size() > 1 && want.front() == '"') want = want.substr(1, want.size() - 2);
      CHECK_MESSAGE(normalized(value) == want, key, ": help says ", value, ", the agent has ", want);
    }
    CHECK(flags > 0);
  }
}
