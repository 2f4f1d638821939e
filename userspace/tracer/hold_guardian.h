// SPDX-License-Identifier: Apache-2.0
// A process that continues what memtrail held (SIGSTOP from BPF) when memtrail dies holding it.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "common/unique_fd.h"

namespace memtrail::tracer {

// memtrail stops a launched command at each exec (and at Py_FinalizeEx) from BPF and continues
// it once its probes are in. Killed (SIGKILL) or crashed in between, memtrail would leave it
// stopped; and when memtrail's death orphans the process group (an interactive shell's job),
// the kernel sends the stopped group SIGHUP, which ends most programs.
//
// The guardian is a process forked once the BPF object is loaded. It keeps only a socket to
// memtrail, a pidfd of memtrail and a descriptor of the BPF map held_processes (every hold not
// answered yet: BPF records it before the stop signal, userspace removes it after its SIGCONT).
// It closes every other descriptor: a link it kept would keep memtrail's probes attached.
// When memtrail has let go of the probes (its pidfd says it is gone, or ~HoldGuardian says so
// after the links are closed), it sets holds_released in the BPF object's .bss (its mapping,
// inherited), so that no program holds anything from then on, even one whose link outlives
// memtrail for a moment in a child memtrail was spawning; waits a grace period (no program
// that began before can still be running); then continues every process still in the map whose PID
// names the process held (its start time, through a pidfd), and exits. It sits in a process group
// of its own (the terminal's Ctrl-C and a group kill of memtrail's job miss it), and its one child,
// the anchor, sits in memtrail's group until then: a member whose parent is in another group of the
// same session keeps the group from being orphaned when memtrail dies, so the kernel sends it no
// SIGHUP.
//
// Limits: memtrail as a PID namespace's init takes the namespace down with it (the kernel kills
// every process in it); a process whose group is orphaned already is stopped with no SIGHUP, and
// continued all the same.
class HoldGuardian {
 public:
  // Forks the guardian for the map of descriptor `held_processes_fd`; `holds_released`: the BPF
  // object's flag, in its mapped .bss. Throws memtrail::Error.
  HoldGuardian(int held_processes_fd, volatile uint32_t* holds_released);
  // Tells the guardian that memtrail let go of its probes (call it once every link is closed):
  // it continues any hold left, ends, and is reaped here.
  ~HoldGuardian();
  HoldGuardian(const HoldGuardian&) = delete;
  HoldGuardian& operator=(const HoldGuardian&) = delete;

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  UniqueFd to_guardian_;  // write end: 'q' when memtrail lets go
};

}  // namespace memtrail::tracer
