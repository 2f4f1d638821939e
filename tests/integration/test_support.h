// SPDX-License-Identifier: Apache-2.0
// What every end-to-end test needs: the root check, a scratch directory, reading a JSON report.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace memtrail::testing {

// Skips where BPF cannot work (not root), unless MEMTRAIL_REQUIRE_BPF=1 (CI): then it fails,
// so that CI never passes by skipping.
#define REQUIRE_BPF_OR_SKIP()                                                              \
  do {                                                                                     \
    if (geteuid() != 0) {                                                                  \
      const char* required = std::getenv("MEMTRAIL_REQUIRE_BPF");                          \
      if (required && std::string(required) == "1") {                                      \
        FAIL() << "MEMTRAIL_REQUIRE_BPF=1 but not running as root: BPF tests cannot run";  \
      }                                                                                    \
      GTEST_SKIP() << "integration tests load BPF programs and need root; run as root or " \
                      "set MEMTRAIL_REQUIRE_BPF=1 to make this a failure";                 \
    }                                                                                      \
  } while (0)

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/memtrail-it-XXXXXX";
    path_ = mkdtemp(pattern);
  }
  ~TempDir() { std::system(("rm -rf " + path_).c_str()); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A CPython 3.11 whose runtime is a shared library built with -fPIC, as pyenv and asdf build
// it (--enable-shared): bin/python3.11 next to lib/libpython3.11.so.1.0. Empty when none is
// installed ($PYENV_ROOT, else /root/.pyenv).
inline std::string pyenv_shared_python311() {
  const char* root = std::getenv("PYENV_ROOT");
  std::filesystem::path versions =
      std::filesystem::path(root && *root ? root : "/root/.pyenv") / "versions";
  std::error_code error;
  for (const auto& version : std::filesystem::directory_iterator(versions, error)) {
    if (version.path().filename().string().rfind("3.11.", 0) != 0) continue;
    auto python = version.path() / "bin" / "python3.11";
    if (std::filesystem::exists(python) &&
        std::filesystem::exists(version.path() / "lib" / "libpython3.11.so.1.0")) {
      return python.string();
    }
  }
  return "";
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "no JSON report at " << path;
  if (!in.good()) return nlohmann::json::object();
  return nlohmann::json::parse(in);
}

// The sites of a leak report whose stack holds `function` (of process `pid` only, if given).
inline std::vector<nlohmann::json> sites_with_function(const nlohmann::json& report,
                                                       const std::string& function,
                                                       std::optional<int> pid = std::nullopt) {
  std::vector<nlohmann::json> found;
  if (!report.contains("leaks")) return found;
  for (const auto& site : report["leaks"]) {
    if (pid && site["pid"] != *pid) continue;
    for (const auto& frame : site["stack"]) {
      if (frame["function"] == function) {
        found.push_back(site);
        break;
      }
    }
  }
  return found;
}

// The last component of a path in a JSON string ("" for null).
inline std::string file_name(const nlohmann::json& value) {
  if (!value.is_string()) return "";
  std::string path = value;
  return path.substr(path.rfind('/') + 1);
}

// The BPF programs loaded on the machine, as bpftool lists them (empty when it cannot).
inline nlohmann::json loaded_programs() {
  std::string text;
  if (FILE* pipe = popen("bpftool -j prog show 2>/dev/null", "r")) {
    char buffer[4096];
    size_t got;
    while ((got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) text.append(buffer, got);
    pclose(pipe);
  }
  nlohmann::json programs = nlohmann::json::parse(text, nullptr, false);
  return programs.is_array() ? programs : nlohmann::json::array();
}

// IDs of the BPF programs process `pid` holds open, from /proc/PID/fdinfo ("prog_id:").
// IDs are not reused while the machine runs, so a vanished ID means that program was unloaded.
inline std::set<int> programs_owned_by(pid_t pid) {
  std::set<int> ids;
  std::string directory = "/proc/" + std::to_string(pid) + "/fdinfo";
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    std::ifstream info(entry.path());
    std::string key;
    while (info >> key) {
      if (key == "prog_id:") {
        int id = 0;
        info >> id;
        ids.insert(id);
      }
    }
  }
  return ids;
}

inline std::set<int> still_loaded(const std::set<int>& ids) {
  std::set<int> loaded;
  for (const auto& program : loaded_programs()) {
    if (ids.count(program["id"].get<int>())) loaded.insert(program["id"].get<int>());
  }
  return loaded;
}

// What `bpftool -j ARGUMENTS` prints, parsed (null when it cannot).
inline nlohmann::json bpftool_json(const std::string& arguments) {
  std::string text;
  if (FILE* pipe = popen(("bpftool -j " + arguments + " 2>/dev/null").c_str(), "r")) {
    char buffer[4096];
    size_t got;
    while ((got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) text.append(buffer, got);
    pclose(pipe);
  }
  return nlohmann::json::parse(text, nullptr, false);
}

// The global variables (.bss) of the alloc BPF object that process `pid` (memtrail) holds, by
// name, as bpftool formats them from the map's BTF (empty when it cannot).
inline nlohmann::json bpf_globals_of(pid_t pid) {
  std::set<int> maps;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fdinfo")) {
    std::ifstream info(entry.path());
    std::string key;
    while (info >> key) {
      if (key != "map_id:") continue;
      int id = 0;
      info >> id;
      maps.insert(id);
    }
  }
  nlohmann::json globals = nlohmann::json::object();
  for (int id : maps) {
    // Named by libbpf from the object's name, cut to 8 characters: "alloc_bp.bss".
    nlohmann::json map = bpftool_json("map show id " + std::to_string(id));
    if (!map.is_object() || map.value("name", std::string()) != "alloc_bp.bss") continue;
    nlohmann::json dump = bpftool_json("map dump id " + std::to_string(id));
    if (!dump.is_array() || dump.size() != 1) continue;
    for (const auto& variable : dump[0]["formatted"]["value"][".bss"]) {
      for (const auto& [name, value] : variable.items()) globals[name] = value;
    }
  }
  return globals;
}

}  // namespace memtrail::testing
