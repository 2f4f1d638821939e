// SPDX-License-Identifier: Apache-2.0
// A command followed through its #! lines and env(1) to the programs that will run.
#include "inspect/launch.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <optional>

#include "common/error.h"

namespace memtrail::inspect {
namespace {

// What the kernel reads of a file to recognize it (BINPRM_BUF_SIZE): a #! line is cut there.
constexpr size_t kKernelHeadBytes = 256;
// Scripts the kernel follows, one the next's interpreter, in one exec before it gives up with
// ELOOP ("4 levels of binfmt rewrites", fs/exec.c).
constexpr int kKernelScriptLevels = 4;
// Programs that env(1) executes in turn, followed before memtrail gives up (a loop by env).
constexpr int kMaxEnvHops = 16;

bool is_executable_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
         ::access(path.c_str(), X_OK) == 0;
}

std::string real_path(const std::string& path) {
  char resolved[PATH_MAX];
  return ::realpath(path.c_str(), resolved) ? resolved : path;
}

std::string base_name(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// `name` as execvp finds it: a name with a slash as it is, else the first executable file in
// the directories of `path` (an empty entry is the current directory).
std::optional<std::string> find_program(const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos) {
    return is_executable_file(name) ? std::optional<std::string>(name) : std::nullopt;
  }
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find(':', begin);
    if (end == std::string::npos) end = path.size();
    std::string directory = path.substr(begin, end - begin);
    std::string candidate = (directory.empty() ? "." : directory) + "/" + name;
    if (is_executable_file(candidate)) return candidate;
    begin = end + 1;
  }
  return std::nullopt;
}

// The start of a file, as the kernel's exec sees it.
struct Head {
  enum class Kind { kProgram, kScript, kOther } kind = Kind::kOther;
  std::string interpreter;              // kScript: the first word after #!
  std::optional<std::string> argument;  // kScript: the rest of the line, as one argument
};

Head read_head(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::string bytes(kKernelHeadBytes, '\0');
  file.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<size_t>(std::max<std::streamsize>(file.gcount(), 0)));
  Head head;
  if (bytes.compare(0, 4,
                    "\x7f"
                    "ELF") == 0) {
    head.kind = Head::Kind::kProgram;
    return head;
  }
  if (bytes.compare(0, 2, "#!") != 0) return head;
  head.kind = Head::Kind::kScript;
  std::string line = bytes.substr(
      2, bytes.find('\n') == std::string::npos ? std::string::npos : bytes.find('\n') - 2);
  auto blank = [](char c) { return c == ' ' || c == '\t'; };
  size_t start = 0;
  while (start < line.size() && blank(line[start])) ++start;
  size_t end = start;
  while (end < line.size() && !blank(line[end])) ++end;
  head.interpreter = line.substr(start, end - start);
  while (end < line.size() && blank(line[end])) ++end;
  size_t last = line.size();
  while (last > end && blank(line[last - 1])) --last;
  if (last > end) head.argument = line.substr(end, last - end);
  return head;
}

// Where a file led: the program (ELF) the kernel loads for it, and the last #! line's
// argument when a script got there (what env receives).
struct Loaded {
  std::string program;
  bool via_script = false;
  std::optional<std::string> argument;
};

class Follower {
 public:
  Follower(std::string command, std::string path, LaunchChain& chain)
      : command_(std::move(command)), path_(std::move(path)), chain_(chain) {}

  // Follows `file` (executable, checked) through its #! interpreters, as one exec does.
  Loaded load(const std::string& file) {
    Loaded loaded;
    std::string current = file;
    for (int level = 0;; ++level) {
      Head head = read_head(current);
      if (head.kind == Head::Kind::kProgram) {
        chain_.steps.push_back(current + ": a program (ELF)");
        loaded.program = current;
        return loaded;
      }
      if (head.kind == Head::Kind::kOther) {
        fail(current + " is neither a program (ELF) nor a script starting with #!",
             "run it with the program that reads it, e.g. memtrail leaks -- sh " + current);
      }
      std::string line = "#!" + head.interpreter + (head.argument ? " " + *head.argument : "");
      std::string real = real_path(current);
      if (std::find(scripts_.begin(), scripts_.end(), real) != scripts_.end()) {
        fail("its #! interpreters loop (" + current + " comes back: " + line + ")",
             "fix the #! line of " + current);
      }
      scripts_.push_back(real);
      if (head.interpreter.empty()) {
        fail(current + "'s #! line names no interpreter", "fix the #! line of " + current);
      }
      if (level >= kKernelScriptLevels) {
        fail("more scripts, each the next's #! interpreter, than the kernel follows (" +
                 std::to_string(kKernelScriptLevels) + ")",
             "run the last interpreter explicitly");
      }
      chain_.steps.push_back(current + ": a script, " + line);
      check_interpreter(current, head.interpreter);
      loaded.via_script = true;
      loaded.argument = head.argument;
      current = head.interpreter;
    }
  }

  // What env executes when a #! line made it the program: followed for the steps and the
  // errors (memtrail holds that exec and probes the program it loads then).
  void follow_env(const Loaded& loaded, int hops) {
    if (!loaded.via_script || base_name(loaded.program) != "env") return;
    if (hops >= kMaxEnvHops) fail("env executes programs in a loop", "fix the #! lines");
    std::vector<std::string> words;
    if (loaded.argument) words.push_back(*loaded.argument);
    std::string path = path_;
    std::optional<std::string> target;
    for (size_t i = 0; i < words.size() && !target; ++i) {
      const std::string word = words[i];
      if (word.rfind("-S", 0) == 0 || word.rfind("--split-string=", 0) == 0) {
        std::string text = word[1] == 'S' ? word.substr(2) : word.substr(15);
        if (text.empty() && i + 1 < words.size()) text = words[++i];
        auto split = split_env_string(text);
        words.insert(words.begin() + static_cast<std::ptrdiff_t>(i) + 1, split.begin(),
                     split.end());
      } else if (word == "--") {
        if (i + 1 < words.size()) target = words[i + 1];
        break;
      } else if (word == "-u" || word == "-C") {
        ++i;  // the option's argument
      } else if (word.rfind('-', 0) == 0) {
        continue;  // -i, -0, -v, -uNAME, --unset=NAME, --chdir=DIR, ...
      } else if (word.find('=') != std::string::npos) {
        if (word.rfind("PATH=", 0) == 0) path = word.substr(5);
      } else {
        target = word;
      }
    }
    if (!target) {
      fail(
          "its #! line runs env without a program to execute (env would execute the script "
          "itself)",
          "name the interpreter after env in the #! line");
    }
    if (target->find_first_of(" \t") != std::string::npos) {
      fail("its #! line runs env with the single argument `" + *target +
               "` (the kernel passes the rest of a #! line as one word)",
           "split it: #!/usr/bin/env -S " + *target);
    }
    auto found = find_program(*target, path);
    if (!found) {
      fail("its #! line runs `env " + *target + "`, and " + *target +
               (target->find('/') == std::string::npos ? " is not found in PATH"
                                                       : " is not an executable file"),
           "install it, or name its full path in the #! line");
    }
    chain_.steps.push_back("env executes " + *target + ": " + *found +
                           ", held at that exec until its probes are in");
    follow_env(load(*found), hops + 1);
  }

 private:
  [[noreturn]] void fail(const std::string& why, const std::string& hint) const {
    throw Error("cannot run " + command_ + ": " + why, hint);
  }

  void check_interpreter(const std::string& script, const std::string& interpreter) const {
    struct stat info {};
    if (::stat(interpreter.c_str(), &info) != 0) {
      bool crlf = !interpreter.empty() && interpreter.back() == '\r';
      fail("its #! interpreter " + interpreter + " does not exist" +
               (crlf ? " (the script has Windows line endings)" : ""),
           crlf ? "convert " + script + " to Unix line endings (dos2unix)"
                : "install it, or fix the #! line of " + script);
    }
    if (!S_ISREG(info.st_mode) || ::access(interpreter.c_str(), X_OK) != 0) {
      fail("its #! interpreter " + interpreter + " is not an executable file",
           "fix the #! line of " + script);
    }
  }

  std::string command_, path_;
  LaunchChain& chain_;
  std::vector<std::string> scripts_;  // real paths of the scripts followed: one twice is a loop
};

}  // namespace

std::vector<std::string> split_env_string(const std::string& text) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  char quote = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quote) {
      if (c == quote) {
        quote = 0;
      } else if (c == '\\' && quote == '"' && i + 1 < text.size()) {
        word += text[++i];
      } else {
        word += c;
      }
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    in_word = true;
    if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '\\' && i + 1 < text.size()) {
      char next = text[++i];
      word += next == '_' ? ' ' : next == 't' ? '\t' : next == 'n' ? '\n' : next;
    } else {
      word += c;
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

LaunchChain resolve_launch(const std::string& command, const std::string& path) {
  LaunchChain chain;
  auto found = find_program(command, path);
  if (!found) {
    if (command.find('/') == std::string::npos) {
      throw Error("cannot run " + command + ": command not found in PATH",
                  "give the command's full path");
    }
    throw Error(
        "cannot run " + command + ": " +
            (::access(command.c_str(), F_OK) == 0 ? "not an executable file" : "no such file"),
        "check the command's path and permissions");
  }
  chain.executable = *found;
  Follower follower(command, path, chain);
  Loaded loaded = follower.load(chain.executable);
  chain.program = loaded.program;
  follower.follow_env(loaded, 0);
  return chain;
}

}  // namespace memtrail::inspect
