// SPDX-License-Identifier: Apache-2.0
// Pressure stall information (PSI): reading memory pressure files and arming PSI triggers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/unique_fd.h"
#include "model/paging.h"

namespace memtrail::sampler {

// Parses a PSI file ("some avg10=0.12 avg60=... avg300=... total=N" and the same for "full").
// `available` is true once the "some" line parsed; a missing "full" line (cpu.pressure at the
// root on kernels before 5.13) leaves the full fields at 0.
model::PressureStall parse_pressure(std::string_view text);

// Reads a PSI file such as /proc/pressure/memory or <cgroup>/memory.pressure. A file that is
// missing or unreadable (no PSI in this kernel, psi=0, cgroup.pressure=0: EOPNOTSUPP) gives
// `available == false`; it never throws.
model::PressureStall read_pressure(const std::string& path);

// Which stall share a trigger watches (Documentation/accounting/psi.rst).
enum class StallKind { kSome, kFull };

// A PSI trigger: poll(fd(), POLLPRI) wakes when the stall time within a moving `window_us`
// exceeds `stall_us`, at most once per window; POLLERR means the cgroup was removed. The kernel
// drops the trigger when the file descriptor is closed, i.e. when this object is destroyed.
class PressureTrigger {
 public:
  // Opens `path` (O_RDWR | O_NONBLOCK | O_CLOEXEC) and writes "<some|full> STALL WINDOW".
  // Throws memtrail::Error when it cannot: missing file, no permission, or a window the kernel
  // refuses (500 ms..10 s; without CAP_SYS_RESOURCE only multiples of 2 s).
  PressureTrigger(const std::string& path, StallKind kind, uint64_t stall_us, uint64_t window_us);

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

 private:
  UniqueFd fd_;
  std::string path_;
};

}  // namespace memtrail::sampler
