// SPDX-License-Identifier: Apache-2.0
// memtrail leaks -- COMMAND where COMMAND is a script: its #! interpreter, env, and wrapper
// scripts that execute the real program, traced from that program's first instruction.
#include <elf.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "subprocess.h"
#include "test_support.h"

namespace memtrail::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// A Python program that leaks at once, with no gate: 300 bytes(1000) objects, each one calloc
// of 1,033 bytes (a 33-byte header, then the data) at line kLeakLine, kept in a module-level
// list, and 300 object() instances (16 bytes each, pymalloc's: Python objects) in a list (56
// bytes; its array of 300 pointers is malloc'd) at line kSmallLine. Only a process traced from the
// interpreter's first instruction, its CPython runtime known before any Python code runs, has them
// all under those lines. Then it says "done" and waits for the end of its input.
constexpr int kLeakLine = 6;
constexpr uint64_t kLeakBytes = 300 * 1033;
constexpr int kSmallLine = 8;
std::string python_program(const std::string& shebang) {
  return shebang +
         "\n"
         "import sys\n"
         "kept = []\n"
         "def leak(count):\n"
         "    for _ in range(count):\n"
         "        kept.append(bytes(1000))\n"  // kLeakLine
         "leak(300)\n"
         "small = [object() for _ in range(300)]\n"  // kSmallLine
         "print('done', flush=True)\n"
         "sys.stdin.readline()\n";
}

// The directory itself, without the slash TempDir::file() would add.
std::string path_of(const TempDir& dir) {
  std::string path = dir.file("");
  path.pop_back();
  return path;
}

void write_file(const std::string& path, const std::string& text, mode_t mode = 0755) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

// `memtrail leaks -v` running `command` with PATH set to `path`.
std::vector<std::string> memtrail_with_path(const std::string& path, const std::string& json_path,
                                            std::vector<std::string> command) {
  std::vector<std::string> argv{"/usr/bin/env",
                                "PATH=" + path,
                                MEMTRAIL_BINARY,
                                "leaks",
                                "-v",
                                "-q",
                                "--top",
                                "3",
                                "--json",
                                json_path,
                                "--interval",
                                "0.25",
                                "--python-objects",
                                "exact",
                                "--"};
  argv.insert(argv.end(), command.begin(), command.end());
  return argv;
}

// Runs memtrail until the command printed `until` (after writing `input`, if any), stops it
// with SIGINT and returns its report; `stderr_text` gets what it said.
json run_until(Subprocess& tracer, const std::string& json_path, const std::string& until,
               std::string& stderr_text, const std::string& input = "") {
  auto attached = tracer.wait_for_stderr("memtrail: tracing pid ", 30s);
  EXPECT_TRUE(attached.has_value()) << tracer.stderr_seen() << tracer.drain_stderr();
  if (!input.empty()) tracer.write_stdin(input);
  EXPECT_TRUE(tracer.wait_for_stdout(until, 30s).has_value()) << tracer.stderr_seen();
  tracer.signal(SIGINT);
  auto code = tracer.wait(30s);
  stderr_text = tracer.stderr_seen() + tracer.drain_stderr();
  EXPECT_EQ(code, std::optional<int>(0)) << stderr_text;
  return read_json(json_path);
}

// The bytes and blocks calloc'd under the leaking Python line: (bytes, blocks).
std::pair<uint64_t, uint64_t> leaked_at_python_line(const json& report, int line) {
  uint64_t bytes = 0, blocks = 0;
  for (const auto& site : report["leaks"]) {
    if (site["allocator"] != "calloc") continue;
    for (const auto& frame : site["stack"]) {
      if (frame["language"] != "python") continue;
      if (frame["function"] == "leak" && frame["line"] == line) {
        bytes += site["outstanding_bytes"].get<uint64_t>();
        blocks += site["outstanding_allocations"].get<uint64_t>();
      }
      break;  // the innermost Python frame only
    }
  }
  return {bytes, blocks};
}

// The Python objects created under a Python line and still alive: (bytes, objects).
std::pair<uint64_t, uint64_t> objects_at_python_line(const json& report, int line) {
  uint64_t bytes = 0, objects = 0;
  for (const auto& site : report["leaks"]) {
    if (site["allocator"] != "python_object") continue;
    for (const auto& frame : site["stack"]) {
      if (frame["language"] != "python") continue;
      if (frame["line"] == line) {
        bytes += site["outstanding_bytes"].get<uint64_t>();
        objects += site["outstanding_allocations"].get<uint64_t>();
      }
      break;  // the innermost Python frame only
    }
  }
  return {bytes, objects};
}

bool said(const std::string& text, const std::string& fragment) {
  return text.find(fragment) != std::string::npos;
}

// A console script (what pip installs for gunicorn) found on PATH, and an app started as
// ./manage.py: `#!/usr/bin/python3` is one exec; `#!/usr/bin/env python3` is env, which then
// executes python3: held at that exec until its probes are in and its runtime known.
TEST(LeaksLaunch, AConsoleScriptOnPathAndAnEnvScriptReportTheLeakingPythonLineExactly) {
  REQUIRE_BPF_OR_SKIP();
  ASSERT_TRUE(std::filesystem::exists("/usr/bin/python3")) << "install python3";
  for (std::string shebang : {"#!/usr/bin/python3", "#!/usr/bin/env python3"}) {
    SCOPED_TRACE(shebang);
    TempDir dir;
    std::string script = dir.file("leaky-console");
    write_file(script, python_program(shebang));
    Subprocess tracer(
        memtrail_with_path(path_of(dir) + ":/usr/bin:/bin", dir.file("r.json"), {"leaky-console"}));
    std::string err;
    json report = run_until(tracer, dir.file("r.json"), "done", err);
    auto [bytes, blocks] = leaked_at_python_line(report, kLeakLine);
    EXPECT_EQ(bytes, kLeakBytes) << report["leaks"].dump(2) << err;
    EXPECT_EQ(blocks, 300u);
    // Python objects are traced by default, also in a program reached through env's exec.
    EXPECT_EQ(objects_at_python_line(report, kSmallLine),
              std::make_pair(uint64_t{300 * 16 + 56}, uint64_t{301}))
        << report["leaks"].dump(2);
    EXPECT_TRUE(said(err, "memtrail: command: " + script + ": a script, " + shebang)) << err;
    if (shebang.find("env") != std::string::npos) {
      EXPECT_TRUE(said(err, "memtrail: command: /usr/bin/env: a program (ELF)")) << err;
      EXPECT_TRUE(said(err, "memtrail: command: env executes python3: /usr/bin/python3")) << err;
      EXPECT_TRUE(said(err, " held at the first instruction of /usr/bin/python3")) << err;
    }
    ASSERT_EQ(report["targets"].size(), 1u);
    EXPECT_EQ(report["targets"][0]["python"]["frames"], true);
  }
}

// A pyenv/asdf-style shim: `python3` on PATH is a shell script that executes the real
// interpreter. dash runs first; its exec of /usr/bin/python3 is held, probed, then continued.
TEST(LeaksLaunch, AShellShimThatExecutesPython3ReportsTheLeakingPythonLineExactly) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  write_file(dir.file("python3"), "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n");
  std::string app = dir.file("app.py");
  write_file(app, python_program("# no #! line: run by the interpreter"), 0644);
  Subprocess tracer(
      memtrail_with_path(path_of(dir) + ":/usr/bin:/bin", dir.file("r.json"), {"python3", app}));
  std::string err;
  json report = run_until(tracer, dir.file("r.json"), "done", err);
  auto [bytes, blocks] = leaked_at_python_line(report, kLeakLine);
  EXPECT_EQ(bytes, kLeakBytes) << report["leaks"].dump(2) << err;
  EXPECT_EQ(blocks, 300u);
  EXPECT_EQ(objects_at_python_line(report, kSmallLine),
            std::make_pair(uint64_t{300 * 16 + 56}, uint64_t{301}))
      << report["leaks"].dump(2);
  EXPECT_TRUE(said(err, "memtrail: command: " + dir.file("python3") + ": a script, #!/bin/sh"))
      << err;
  EXPECT_TRUE(said(err, " held at the first instruction of /usr/bin/python3")) << err;
  ASSERT_EQ(report["targets"].size(), 1u);  // one process: the shim became python
  EXPECT_EQ(report["targets"][0]["comm"], "python3");
}

// The file offset of the dynamic symbol `name` in the ELF executable at `path` (0: not found).
uint64_t symbol_file_offset(const std::string& path, const std::string& name) {
  std::ifstream in(path, std::ios::binary);
  std::string image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto at = [&](uint64_t offset, auto& value) {
    if (offset + sizeof(value) <= image.size())
      std::memcpy(&value, image.data() + offset, sizeof(value));
  };
  Elf64_Ehdr header{};
  at(0, header);
  Elf64_Shdr dynsym{}, dynstr{};
  for (unsigned i = 0; i < header.e_shnum; ++i) {
    Elf64_Shdr section{};
    at(header.e_shoff + i * sizeof(Elf64_Shdr), section);
    if (section.sh_type == SHT_DYNSYM) {
      dynsym = section;
      at(header.e_shoff + section.sh_link * sizeof(Elf64_Shdr), dynstr);
    }
  }
  for (uint64_t i = 0; dynsym.sh_entsize && i < dynsym.sh_size / dynsym.sh_entsize; ++i) {
    Elf64_Sym symbol{};
    at(dynsym.sh_offset + i * sizeof(Elf64_Sym), symbol);
    if (std::string(image.c_str() + dynstr.sh_offset + symbol.st_name) != name) continue;
    for (unsigned p = 0; p < header.e_phnum; ++p) {
      Elf64_Phdr segment{};
      at(header.e_phoff + p * sizeof(Elf64_Phdr), segment);
      if (segment.p_type == PT_LOAD && segment.p_vaddr <= symbol.st_value &&
          symbol.st_value < segment.p_vaddr + segment.p_filesz) {
        return symbol.st_value - segment.p_vaddr + segment.p_offset;
      }
    }
  }
  return 0;
}

// An interpreter whose code is not what the creation-site scan expects: Debian's python3.11
// copied, the out-of-line _Py_NewReference's read of _Py_tracemalloc_config.tracing replaced
// by `xor %eax, %eax` (the copy still runs: only tracemalloc, unused here, would miss objects).
// memtrail must refuse to probe its object creations, in one line, and trace the rest.
TEST(LeaksLaunch, AnInterpreterWhoseCodeTheScanDoesNotExpectIsTracedNativelyAndSaidSo) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string copy = dir.file("python3.11");
  std::filesystem::copy_file("/usr/bin/python3.11", copy);
  uint64_t offset = symbol_file_offset(copy, "_Py_NewReference");
  ASSERT_NE(offset, 0u);
  {
    std::fstream binary(copy, std::ios::in | std::ios::out | std::ios::binary);
    binary.seekg(static_cast<std::streamoff>(offset));
    unsigned char code[8] = {};
    binary.read(reinterpret_cast<char*>(code), sizeof(code));
    // mov tracing(%rip), %eax; test %eax, %eax: 3.11.2's first 8 bytes.
    ASSERT_TRUE(code[0] == 0x8b && code[1] == 0x05 && code[6] == 0x85 && code[7] == 0xc0)
        << "_Py_NewReference does not start as on Debian's 3.11.2";
    // xor %eax, %eax; a 6-byte nop: the flag reads as 0, as it does without tracemalloc.
    const unsigned char patched[8] = {0x31, 0xc0, 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00};
    binary.seekp(static_cast<std::streamoff>(offset));
    binary.write(reinterpret_cast<const char*>(patched), sizeof(patched));
  }
  std::filesystem::permissions(copy, std::filesystem::perms::owner_all);
  std::string app = dir.file("app.py");
  write_file(app, python_program("# run by the patched copy"), 0644);
  Subprocess tracer(memtrail_with_path("/usr/bin:/bin", dir.file("r.json"), {copy, app}));
  std::string err;
  json report = run_until(tracer, dir.file("r.json"), "done", err);
  // One line says it, naming why; the note in the report too.
  std::string why =
      "its Python objects are not traced (its native allocations are): "
      "_Py_NewReference does not check _Py_tracemalloc_config.tracing";
  size_t first = err.find(why);
  EXPECT_NE(first, std::string::npos) << err;
  EXPECT_EQ(err.find(why, first + 1), std::string::npos) << "said once: " << err;
  bool noted = false;
  for (const auto& note : report["notes"]) {
    noted = noted || note.get<std::string>().find(why) != std::string::npos;
  }
  EXPECT_TRUE(noted) << report["notes"].dump(2);
  // No object sites; the native leak is whole, under its Python line (frames still walked).
  for (const auto& site : report["leaks"]) {
    EXPECT_NE(site["allocator"], "python_object") << site.dump(2);
  }
  auto [bytes, blocks] = leaked_at_python_line(report, kLeakLine);
  EXPECT_EQ(bytes, kLeakBytes) << report["leaks"].dump(2) << err;
  EXPECT_EQ(blocks, 300u);
  ASSERT_EQ(report["targets"].size(), 1u);
  EXPECT_EQ(report["targets"][0]["python"]["frames"], true);
}

// Any script, not only Python: a shell script that runs a C program (a child of the shell,
// followed at its fork and held at its exec). The program frees the 20 blocks it allocated
// before its gate: traced from its first instruction, none of those frees is unmatched.
TEST(LeaksLaunch, AShellScriptRunningACProgramTracesItFromItsFirstInstruction) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string script = dir.file("run-leaky.sh");
  write_file(script, std::string("#!/bin/sh\n") + MEMTRAIL_LEAKY + " preattach 5 200\necho end\n");
  Subprocess tracer(memtrail_with_path("/usr/bin:/bin", dir.file("r.json"), {script}));
  std::string err;
  json report = run_until(tracer, dir.file("r.json"), "done", err, "go\n");
  const json* leaky = nullptr;
  for (const auto& target : report["targets"]) {
    if (target["comm"] == "leaky") leaky = &target;
  }
  ASSERT_NE(leaky, nullptr) << report["targets"].dump(2) << err;
  EXPECT_EQ((*leaky)["losses"]["unmatched_frees"], 0) << leaky->dump(2);
  uint64_t leaked = 0;
  for (const auto& site : report["leaks"]) {
    if (site["pid"] == (*leaky)["pid"] && !site["stack"].empty() &&
        site["stack"][0]["function"] == "leak_malloc") {
      leaked += site["outstanding_bytes"].get<uint64_t>();
    }
  }
  EXPECT_EQ(leaked, 1000u) << report["leaks"].dump(2);
  EXPECT_TRUE(said(err, " held at the first instruction of " + std::string(MEMTRAIL_LEAKY))) << err;
}

// ---- memtrail killed (SIGKILL) while it holds a launched program, or while it traces it ----

// memtrail run by job_shell (tests/targets/job_shell.c) as an interactive shell runs a job: in a
// process group of its own, in a session whose shell waits for it; what memtrail leaves when it
// dies is reaped by job_shell, outside that session, so that the kernel sends SIGHUP to the
// job's group if it has a stopped process once memtrail is gone, as it would under a terminal.
// Its stdout lines (job_shell's and the program's) are kept as they come.
class Job {
 public:
  explicit Job(const std::vector<std::string>& memtrail_command) : shell(argv(memtrail_command)) {}

  // The first stdout line starting with `prefix`, read now or before; nullopt at the deadline.
  std::optional<std::string> line(const std::string& prefix, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (size_t checked = 0;; ++checked) {
      for (; checked < lines_.size(); ++checked) {
        if (lines_[checked].rfind(prefix, 0) == 0) return lines_[checked];
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      auto next = shell.read_stdout_line(left);
      if (!next) return std::nullopt;
      lines_.push_back(*next);
      --checked;
    }
  }
  // The pid a line "WORD PID ..." names (job, ready).
  pid_t pid_in(const std::string& prefix, std::chrono::milliseconds timeout) {
    auto found = line(prefix, timeout);
    return found ? std::stoi(found->substr(prefix.size())) : -1;
  }
  // Everything seen, for failure messages.
  std::string seen() const {
    std::string text = "stdout:\n";
    for (const auto& each : lines_) text += each + "\n";
    return text + "stderr:\n" + shell.stderr_seen();
  }

  Subprocess shell;

 private:
  static std::vector<std::string> argv(const std::vector<std::string>& memtrail_command) {
    std::vector<std::string> all{MEMTRAIL_JOB_SHELL, "/usr/bin/env"};
    all.insert(all.end(), memtrail_command.begin(), memtrail_command.end());
    return all;
  }
  std::vector<std::string> lines_;
};

// The state letter of /proc/PID/stat ('S' sleeping, 'T' stopped), or '?' when it is gone.
char state_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t name_end = text.rfind(')');
  return name_end == std::string::npos || name_end + 2 >= text.size() ? '?' : text[name_end + 2];
}

// The state of `pid` once it is blocked reading its input ('S'), or the last one seen in 5 s.
char state_once_waiting(pid_t pid) {
  char state = '?';
  for (int i = 0; i < 100 && (state = state_of(pid)) != 'S'; ++i) {
    std::this_thread::sleep_for(50ms);
  }
  return state;
}

// Fields of /proc/PID/stat after the name: [0] is the state, [1] the parent, [2] the group.
std::vector<std::string> stat_fields(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t name_end = text.rfind(')');
  std::vector<std::string> fields;
  if (name_end == std::string::npos) return fields;
  std::istringstream rest(text.substr(name_end + 1));
  for (std::string field; rest >> field;) fields.push_back(field);
  return fields;
}

std::string comm_of(pid_t pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(comm, name);
  return name;
}

// The children of `parent` named `comm`.
std::vector<pid_t> children_named(pid_t parent, const std::string& comm) {
  std::vector<pid_t> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = std::stoi(name);
    auto fields = stat_fields(pid);
    if (fields.size() > 1 && fields[1] == std::to_string(parent) && comm_of(pid) == comm) {
      found.push_back(pid);
    }
  }
  return found;
}

// What each descriptor of `pid` refers to (readlink of /proc/PID/fd/N).
std::map<int, std::string> descriptors_of(pid_t pid) {
  std::map<int, std::string> descriptors;
  std::string directory = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    std::error_code error;
    auto target = std::filesystem::read_symlink(entry.path(), error);
    descriptors[std::stoi(entry.path().filename())] = error ? "?" : target.string();
  }
  return descriptors;
}

// The job shell reaped `pid` with exit code `code`, then the guardian and its anchor ended too
// (nothing is left), and the shell itself exited 0.
void expect_ends_with(Job& job, pid_t pid, int code) {
  auto ended = job.line("reaped " + std::to_string(pid) + " ", 10s);
  EXPECT_EQ(ended, "reaped " + std::to_string(pid) + " exited " + std::to_string(code))
      << job.seen();
  EXPECT_TRUE(job.line("all ended", 10s)) << job.seen();
  EXPECT_EQ(job.shell.wait(10s), std::optional<int>(0));
}

std::string held_line(pid_t pid) {
  return "memtrail: pid " + std::to_string(pid) +
         " was held (stopped) when memtrail ended: continued it (SIGCONT)";
}

// A wrapper script that executes the real program (as a pyenv shim does): the wrapper is held
// at its first instruction (start), and leaky at its own (exec); memtrail killed right then
// (SIGKILL, from the test hook, as it reads the hold). The guardian continues it: leaky runs to
// its normal end, exit code 0 and its output, never stopped, and without the SIGHUP the kernel
// sends a job's stopped group when the job's leader dies (before the guardian, exactly that:
// `reaped PID killed by signal 1`).
TEST(LeaksLaunch, MemtrailKilledWhileItHoldsTheProgramAWrapperExecutesLeavesItToRunToItsEnd) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string script = dir.file("wrapper.sh");
  write_file(script, std::string("#!/bin/sh\nexec ") + MEMTRAIL_LEAKY + " basic 3 100\n");
  for (std::string hold : {"start", "exec"}) {
    SCOPED_TRACE("killed at the hold of " + hold);
    Job job({"MEMTRAIL_TEST_KILL_AT_HOLD=" + hold, MEMTRAIL_BINARY, "leaks", "-q", "--", script});
    EXPECT_TRUE(job.line("job killed by signal 9", 30s)) << job.seen();
    pid_t leaky = job.pid_in("ready ", 10s);  // it runs: continued
    ASSERT_GT(leaky, 0) << job.seen();
    EXPECT_TRUE(job.shell.wait_for_stderr(held_line(leaky), 10s)) << job.seen();
    EXPECT_EQ(state_once_waiting(leaky), 'S') << "not waiting for its input";
    job.shell.write_stdin("go\n");
    EXPECT_TRUE(job.line("line leak_malloc ", 10s)) << job.seen();
    ASSERT_TRUE(job.line("done", 10s)) << job.seen();
    job.shell.write_stdin("quit\n");
    expect_ends_with(job, leaky, 0);
  }
}

// A CPython program is held at Py_FinalizeEx (its objects read before the interpreter frees
// them), here through a wrapper that executes python3; memtrail killed right then. Continued by
// the guardian, it finalizes as it would have: its atexit handler runs (and waits for a line,
// not stopped), and it exits with its own code, 7.
TEST(LeaksLaunch, MemtrailKilledWhileItHoldsAPythonProgramAtPyFinalizeExLeavesItToEndNormally) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string program = dir.file("ends.py");
  write_file(program,
             "import atexit, os, sys\n"
             "kept = [object() for _ in range(100)]\n"
             "def at_end():\n"
             "    print('finalizing', flush=True)\n"
             "    sys.stdin.readline()\n"
             "    print('bye', flush=True)\n"
             "atexit.register(at_end)\n"
             "print('ready', os.getpid(), flush=True)\n"
             "sys.stdin.readline()\n"
             "sys.exit(7)\n",
             0644);
  std::string script = dir.file("python3");
  write_file(script, "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n");
  Job job({"MEMTRAIL_TEST_KILL_AT_HOLD=finalizing", MEMTRAIL_BINARY, "leaks", "-q",
           "--python-objects", "exact", "--", script, program});
  pid_t python = job.pid_in("ready ", 30s);
  ASSERT_GT(python, 0) << job.seen();
  // Its probes (Py_FinalizeEx's among them) are in once memtrail says it traces it.
  ASSERT_TRUE(job.shell.wait_for_stderr("memtrail: tracing pid ", 30s)) << job.seen();
  job.shell.write_stdin("\n");  // sys.exit(7): Py_FinalizeEx
  EXPECT_TRUE(job.line("job killed by signal 9", 30s)) << job.seen();
  EXPECT_TRUE(job.shell.wait_for_stderr(held_line(python), 10s)) << job.seen();
  ASSERT_TRUE(job.line("finalizing", 10s)) << job.seen();
  EXPECT_EQ(state_once_waiting(python), 'S') << "not waiting for its input";
  job.shell.write_stdin("\n");
  EXPECT_TRUE(job.line("bye", 10s)) << job.seen();
  expect_ends_with(job, python, 7);
}

// pyenv's python3.11, whose interpreter is a shared library, is held a second time at its entry
// point (its libraries mapped, before its interpreter initialises); memtrail killed right then.
// Continued by the guardian, it runs its program to its own end, exit code 7.
TEST(LeaksLaunch, MemtrailKilledWhileItHoldsAPythonAtItsEntryPointLeavesItToRunToItsEnd) {
  REQUIRE_BPF_OR_SKIP();
  std::string python = pyenv_shared_python311();
  if (python.empty()) GTEST_SKIP() << "no pyenv CPython 3.11 with a shared libpython here";
  TempDir dir;
  std::string program = dir.file("runs.py");
  write_file(program,
             "import os, sys\n"
             "print('ready', os.getpid(), flush=True)\n"
             "sys.stdin.readline()\n"
             "print('bye', flush=True)\n"
             "sys.exit(7)\n",
             0644);
  Job job({"MEMTRAIL_TEST_KILL_AT_HOLD=entry", MEMTRAIL_BINARY, "leaks", "-q", "--", python, "-S",
           program});
  EXPECT_TRUE(job.line("job killed by signal 9", 30s)) << job.seen();
  pid_t running = job.pid_in("ready ", 10s);  // it runs: continued
  ASSERT_GT(running, 0) << job.seen();
  EXPECT_TRUE(job.shell.wait_for_stderr(held_line(running), 10s)) << job.seen();
  EXPECT_EQ(state_once_waiting(running), 'S') << "not waiting for its input";
  job.shell.write_stdin("\n");
  EXPECT_TRUE(job.line("bye", 10s)) << job.seen();
  expect_ends_with(job, running, 7);
}

// memtrail killed (kill -9) while it traces a launched program, nothing held: the program runs
// on to its normal end. While memtrail runs, its guardian keeps nothing but its three
// descriptors (no BPF program or link that would keep the probes in after memtrail), and its
// anchor sits in memtrail's process group with none; after, memtrail's BPF programs are gone.
TEST(LeaksLaunch, ALaunchedProgramRunsToItsEndWhenMemtrailIsKilledWhileTracingIt) {
  REQUIRE_BPF_OR_SKIP();
  Job job({MEMTRAIL_BINARY, "leaks", "-q", "--", MEMTRAIL_LEAKY, "basic", "3", "100"});
  pid_t memtrail = job.pid_in("job ", 30s);
  ASSERT_GT(memtrail, 0) << job.seen();
  ASSERT_TRUE(job.shell.wait_for_stderr("memtrail: tracing pid ", 30s)) << job.seen();
  pid_t leaky = job.pid_in("ready ", 10s);
  ASSERT_GT(leaky, 0) << job.seen();
  auto guardians = children_named(memtrail, "mt-hold-guard");
  ASSERT_EQ(guardians.size(), 1u);
  auto descriptors = descriptors_of(guardians[0]);
  ASSERT_EQ(descriptors.size(), 6u) << ::testing::PrintToString(descriptors);
  EXPECT_EQ(descriptors[0], "/dev/null");
  EXPECT_EQ(descriptors[1], "/dev/null");
  EXPECT_EQ(descriptors[3].rfind("socket:", 0), 0u) << descriptors[3];
  EXPECT_EQ(descriptors[4], "anon_inode:[pidfd]");
  EXPECT_EQ(descriptors[5], "anon_inode:bpf-map");
  auto anchors = children_named(guardians[0], "mt-hold-anchor");
  ASSERT_EQ(anchors.size(), 1u);
  EXPECT_TRUE(descriptors_of(anchors[0]).empty());
  EXPECT_EQ(stat_fields(anchors[0]).at(2), std::to_string(memtrail)) << "not in memtrail's group";
  EXPECT_NE(stat_fields(guardians[0]).at(2), std::to_string(memtrail));
  std::set<int> programs = programs_owned_by(memtrail);
  EXPECT_GE(programs.size(), 5u);
  job.shell.write_stdin("go\n");
  ASSERT_TRUE(job.line("done", 10s)) << job.seen();
  ASSERT_EQ(::kill(memtrail, SIGKILL), 0);
  EXPECT_TRUE(job.line("job killed by signal 9", 10s)) << job.seen();
  EXPECT_EQ(state_once_waiting(leaky), 'S');
  job.shell.write_stdin("quit\n");
  expect_ends_with(job, leaky, 0);
  // The kernel frees a detached program after grace periods (RCU, RCU tasks trace): soon.
  for (int i = 0; i < 100 && !still_loaded(programs).empty(); ++i) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(still_loaded(programs).empty());
  std::string err = job.shell.stderr_seen() + job.shell.drain_stderr();
  EXPECT_FALSE(said(err, "was held (stopped)")) << err;
}

// Stopped (SIGTERM), memtrail ends the command it launched (SIGTERM), not what the command
// started: that runs on, as README says. Its guardian and anchor end with memtrail (reaped).
TEST(LeaksLaunch, StoppedMemtrailEndsTheCommandNotWhatItStartedAndLeavesNoGuardian) {
  REQUIRE_BPF_OR_SKIP();
  Subprocess tracer({MEMTRAIL_BINARY, "leaks", "-q", "--", "/bin/sh", "-c",
                     "/bin/sleep 60 & echo child $!; wait"});
  auto child_line = tracer.wait_for_stdout("child ", 30s);
  ASSERT_TRUE(child_line) << tracer.stderr_seen();
  pid_t sleeper = std::stoi(child_line->substr(6));
  auto guardians = children_named(tracer.pid(), "mt-hold-guard");
  ASSERT_EQ(guardians.size(), 1u);
  auto anchors = children_named(guardians[0], "mt-hold-anchor");
  ASSERT_EQ(anchors.size(), 1u);
  tracer.signal(SIGTERM);
  EXPECT_EQ(tracer.wait(30s), std::optional<int>(0)) << tracer.drain_stderr();
  EXPECT_EQ(state_of(sleeper), 'S') << "the command's child did not run on";
  EXPECT_EQ(state_of(guardians[0]), '?') << "the guardian outlived memtrail";
  EXPECT_EQ(state_of(anchors[0]), '?') << "the anchor outlived memtrail";
  ::kill(sleeper, SIGKILL);
}

// memtrail ignores SIGPIPE (a closed stdout must not kill it before its report), and an exec
// keeps what is ignored: the command gets the default back, so that `yes | head -n 1` ends
// yes by SIGPIPE, quietly, as outside memtrail (not "yes: standard output: Broken pipe").
TEST(LeaksLaunch, TheCommandGetsTheDefaultSigpipeBackNotMemtrailsIgnoredOne) {
  REQUIRE_BPF_OR_SKIP();
  Subprocess tracer({MEMTRAIL_BINARY, "leaks", "-q", "--", "/bin/sh", "-c",
                     "yes | head -n 1; grep SigIgn /proc/self/status"});
  auto code = tracer.wait(30s);
  std::string out = tracer.drain_stdout(), err = tracer.drain_stderr();
  EXPECT_EQ(code, std::optional<int>(0)) << err;
  EXPECT_FALSE(said(err, "Broken pipe")) << err;
  // SIGPIPE (13) is bit 12 of the mask: the shell's mask has no such bit.
  auto line = out.find("SigIgn:");
  ASSERT_NE(line, std::string::npos) << out;
  uint64_t ignored =
      std::stoull(out.substr(line + 7, out.find('\n', line) - line - 7), nullptr, 16);
  EXPECT_EQ(ignored & (1ull << (SIGPIPE - 1)), 0u) << out.substr(line, 30);
}

struct Outcome {
  int code = -1;
  std::string err;
};

Outcome run_to_end(const std::vector<std::string>& argv) {
  Subprocess process(argv);
  auto code = process.wait(20s);
  EXPECT_TRUE(code.has_value()) << "memtrail hung";
  return {code.value_or(-1), process.drain_stderr()};
}

// Scripts that cannot run: one error line naming the file and why, a hint, exit code 1, and
// nothing started.
TEST(LeaksLaunch, ScriptsThatCannotRunAreOneClearLine) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  write_file(dir.file("missing"), "#!/usr/bin/no-such-python3.99\nprint(1)\n");
  write_file(dir.file("plain"), "#!/bin/sh\necho hi\n", 0644);
  write_file(dir.file("a"), "#!" + dir.file("b") + "\n");
  write_file(dir.file("b"), "#!" + dir.file("a") + "\n");
  write_file(dir.file("nopython"), "#!/usr/bin/env no-such-interpreter\n");
  struct Case {
    std::string command, error;
  } cases[] = {
      {dir.file("missing"), "cannot run " + dir.file("missing") +
                                ": its #! interpreter /usr/bin/no-such-python3.99 does not exist"},
      {dir.file("plain"), "cannot run " + dir.file("plain") + ": not an executable file"},
      {dir.file("a"), "cannot run " + dir.file("a") + ": its #! interpreters loop"},
      {dir.file("nopython"), "cannot run " + dir.file("nopython") +
                                 ": its #! line runs `env no-such-interpreter`, and "
                                 "no-such-interpreter is not found in PATH"},
  };
  for (const auto& each : cases) {
    Outcome outcome = run_to_end({MEMTRAIL_BINARY, "leaks", "-v", "--", each.command});
    EXPECT_EQ(outcome.code, 1) << outcome.err;
    std::istringstream lines(outcome.err);
    std::vector<std::string> errors, hints;
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("memtrail: error: ", 0) == 0) errors.push_back(line);
      if (line.rfind("memtrail: hint: ", 0) == 0) hints.push_back(line);
    }
    ASSERT_EQ(errors.size(), 1u) << outcome.err;
    EXPECT_EQ(errors[0].rfind("memtrail: error: " + each.error, 0), 0u) << errors[0];
    EXPECT_EQ(hints.size(), 1u) << outcome.err;
    EXPECT_FALSE(said(outcome.err, "memtrail: tracing")) << outcome.err;
    // Refused before the BPF programs load, which takes seconds (-v shows libbpf's lines).
    EXPECT_FALSE(said(outcome.err, "libbpf: loading object")) << outcome.err;
  }
}

}  // namespace
}  // namespace memtrail::testing
