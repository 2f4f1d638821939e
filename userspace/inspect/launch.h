// SPDX-License-Identifier: Apache-2.0
// How a command will start: the #! interpreters its scripts name, to the program the kernel loads.
#pragma once

#include <string>
#include <vector>

namespace memtrail::inspect {

// What executing a command leads to, resolved before it runs (nothing of it is executed).
// `./manage.py` with `#!/usr/bin/env python3`: memtrail executes ./manage.py, the kernel loads
// /usr/bin/env for it (the program whose allocators are probed before it starts), and env then
// executes python3 from PATH, a program of its own (held at that exec while its probes go in).
struct LaunchChain {
  std::string executable;  // the command's argv[0] resolved (PATH): what memtrail executes
  std::string program;     // the ELF file the kernel loads for it: the last #! interpreter
  // How each file led to the next, in order, for -v: "./manage.py: a script, #!/usr/bin/env
  // python3", "/usr/bin/env: the program the kernel loads", "env executes python3: ...".
  std::vector<std::string> steps;
};

// Follows `command` as the kernel and env(1) would: a file starting with `#!` runs its
// interpreter (the first word of the line; the rest is one argument), itself a program or
// another script (the kernel allows 5 levels); `env [-S] [OPTION]... [NAME=VALUE]... COMMAND`
// as an interpreter executes COMMAND from PATH (`PATH=` given to env included), which is
// followed the same way. `path` is the PATH the command runs with. Throws memtrail::Error, one
// line naming the file, for: a command not found or not executable, a #! interpreter that does
// not exist or is not executable, a loop of interpreters, a file that is neither a program
// (ELF) nor a script.
LaunchChain resolve_launch(const std::string& command, const std::string& path);

// The words env(1) splits a `-S` string into: blanks separate words, '…' and "…" quote,
// a backslash escapes the next character (\t, \n, \_ for a blank: as GNU env).
std::vector<std::string> split_env_string(const std::string& text);

}  // namespace memtrail::inspect
