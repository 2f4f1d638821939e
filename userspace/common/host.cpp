// SPDX-License-Identifier: Apache-2.0
// The host's name and kernel release.
#include "common/host.h"

#include <limits.h>
#include <sys/utsname.h>
#include <unistd.h>

namespace memtrail {

std::string host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  return gethostname(name, sizeof(name) - 1) == 0 ? name : "";
}

std::string kernel_release() {
  utsname names{};
  return uname(&names) == 0 ? names.release : "";
}

}  // namespace memtrail
