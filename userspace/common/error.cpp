// SPDX-License-Identifier: Apache-2.0
// Messages and hints for errno-style failures.
#include "common/error.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace memtrail {

std::string errno_message(const std::string& operation, int error_number) {
  return operation + " failed: " + std::strerror(error_number);
}

std::string hint_for_errno(int error_number) {
  switch (error_number) {
    case EPERM:
    case EACCES:
      // Telling root to run as root helps no one: then something else refuses.
      if (::geteuid() == 0) {
        return "memtrail runs as root, so a capability is missing from its set (a container "
               "may drop CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN or CAP_SYS_PTRACE), or a security "
               "policy (kernel lockdown, a security module, a sandbox) refuses it";
      }
      return "run memtrail as root, or grant it CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN";
    case ESRCH:
    case ENOENT:
      return "check that the process is still running (ps -p PID)";
    case E2BIG:
    case ENOMEM:
    case ENOSPC:
      return "the system is short of memory for BPF maps; lower the map sizes or free memory";
    default:
      return {};
  }
}

}  // namespace memtrail
