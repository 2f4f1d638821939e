// SPDX-License-Identifier: Apache-2.0
// Runs a command as a job-control shell runs a job, and says how every process left ended.
//
// Usage: job_shell COMMAND [ARGS...]
// job_shell becomes a child subreaper and forks a "shell" that starts a session of its own and
// runs COMMAND in a new process group of that session, as an interactive bash does; the shell
// waits for COMMAND. The processes COMMAND leaves when it dies are reparented to job_shell,
// which is outside the session: like init, it does not keep COMMAND's group from being
// orphaned, so the kernel sends a stopped group SIGHUP and SIGCONT when COMMAND dies, as it does
// to the job of a shell. Lines on stdout (line-buffered, so they interleave with COMMAND's):
//   job PID                      COMMAND started
//   job exited CODE | job killed by signal N
//   reaped PID exited CODE | reaped PID killed by signal N   every other process job_shell reaps
//   all ended                    nothing is left; job_shell exits 0
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static void say_status(const char *what, int status) {
  if (WIFEXITED(status)) {
    printf("%s exited %d\n", what, WEXITSTATUS(status));
  } else if (WIFSIGNALED(status)) {
    printf("%s killed by signal %d\n", what, WTERMSIG(status));
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: job_shell COMMAND [ARGS...]\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    perror("job_shell: PR_SET_CHILD_SUBREAPER");
    return 1;
  }
  pid_t shell = fork();
  if (shell < 0) {
    perror("job_shell: fork");
    return 1;
  }
  if (shell == 0) {
    if (setsid() < 0) {
      perror("job_shell: setsid");
      _exit(1);
    }
    pid_t job = fork();
    if (job < 0) {
      perror("job_shell: fork");
      _exit(1);
    }
    if (job == 0) {
      setpgid(0, 0);
      execv(argv[1], argv + 1);
      perror("job_shell: exec");
      _exit(127);
    }
    setpgid(job, job);  // as shells do: whichever of the two runs first
    printf("job %d\n", (int)job);
    int status = 0;
    while (waitpid(job, &status, 0) < 0 && errno == EINTR) {
    }
    say_status("job", status);
    _exit(0);
  }
  for (;;) {
    int status = 0;
    pid_t reaped = waitpid(-1, &status, 0);
    if (reaped < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD: nothing left
    }
    if (reaped == shell) continue;
    char what[32];
    snprintf(what, sizeof(what), "reaped %d", (int)reaped);
    say_status(what, status);
  }
  printf("all ended\n");
  return 0;
}
