// SPDX-License-Identifier: Apache-2.0
// The paging benchmark's workload: takes page faults as fast as it can and prints what one costs.
//
// Usage: memtrail-bench-faults minor [--mib N] [--rounds R]
//        memtrail-bench-faults major --dir DIR [--mib N] [--rounds R] [--readahead]
//        memtrail-bench-faults prepare --dir DIR [--mib N]
// minor: each round mmaps N MiB (default 256) of anonymous memory, writes one byte per page (one
//   minor fault each: the kernel allocates and zeroes a page) and munmaps it.
// major: each round drops the pages of DIR/memtrail-bench-faults-NMiB.dat (default 64 MiB) from
//   the page cache (posix_fadvise DONTNEED), mmaps the file, reads one byte per page and munmaps
//   it. The mapping is MADV_RANDOM so that the kernel reads only the faulting page: one major
//   fault per page, the most major faults per second a file can give. --readahead keeps the
//   kernel's read-around and readahead (then a few major faults read the whole file; the other
//   pages are minor faults or mapped by fault-around without a fault). The file is created (and
//   synced, or DONTNEED could not drop its pages) when it is missing or has another size, before
//   any timing; `prepare` only does that.
// Output, one line:
//   "ns_per_fault X cpu_ns_per_fault C faults N minflt M majflt J proc_minflt Q proc_majflt P
//    resident_before K wall_s W"
//   ns_per_fault: time of the touch loops alone (CLOCK_MONOTONIC, summed over rounds) / pages
//   touched (faults). cpu_ns_per_fault: the same with the process's CPU time
//   (CLOCK_PROCESS_CPUTIME_ID): without the time spent waiting for a CPU or for the disk.
//   minflt, majflt: getrusage deltas over the loops, to check that each touch was the fault it
//   should be. proc_minflt, proc_majflt: all of the process's faults, start-up
//   included (what /proc/PID/stat says, and what a tracer of the process should count).
//   resident_before: file pages still cached when a round began (mincore; 0 means DONTNEED
//   dropped them all). wall_s: the whole run, set-up included.
// Exit status 1 on a system call failure, 2 on a usage error.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double clock_ns(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static void die(const char *what) {
  fprintf(stderr, "memtrail-bench-faults: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(void) {
  fprintf(stderr,
          "usage: memtrail-bench-faults minor [--mib N] [--rounds R]\n"
          "       memtrail-bench-faults major --dir DIR [--mib N] [--rounds R] [--readahead]\n"
          "       memtrail-bench-faults prepare --dir DIR [--mib N]\n");
  exit(2);
}

static void faults_so_far(long *minflt, long *majflt) {
  struct rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) != 0) die("getrusage");
  *minflt = usage.ru_minflt;
  *majflt = usage.ru_majflt;
}

// Creates the file with non-zero contents (a hole would be read without any I/O) unless it
// already has the right size, and syncs it: DONTNEED drops clean pages only.
static void prepare_file(const char *path, size_t bytes) {
  struct stat st;
  if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == bytes) return;
  char temporary[4096 + 8];
  snprintf(temporary, sizeof(temporary), "%s.tmp", path);
  int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die(temporary);
  static char block[1 << 20];
  for (size_t i = 0; i < sizeof(block); ++i) block[i] = (char)(i * 131 + 7);
  for (size_t done = 0; done < bytes;) {
    size_t chunk = bytes - done < sizeof(block) ? bytes - done : sizeof(block);
    ssize_t written = write(fd, block, chunk);
    if (written <= 0) die("write");
    done += (size_t)written;
  }
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  // Renamed into place once complete: an interrupted run never leaves a short file behind.
  if (rename(temporary, path) != 0) die("rename");
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  const char *mode = argv[1];
  int minor = strcmp(mode, "minor") == 0;
  int major = strcmp(mode, "major") == 0;
  int prepare = strcmp(mode, "prepare") == 0;
  if (!minor && !major && !prepare) usage();
  long mib = minor ? 256 : 64;
  long rounds = minor ? 8 : 1;
  int readahead = 0;
  const char *dir = NULL;
  for (int i = 2; i < argc; ++i) {
    if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc) {
      mib = atol(argv[++i]);
    } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = atol(argv[++i]);
    } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
      dir = argv[++i];
    } else if (strcmp(argv[i], "--readahead") == 0) {
      readahead = 1;
    } else {
      usage();
    }
  }
  if (mib <= 0 || rounds <= 0 || (!minor && !dir)) usage();

  double began = now_ns();
  long page = sysconf(_SC_PAGESIZE);
  size_t bytes = (size_t)mib << 20;
  size_t pages = bytes / (size_t)page;
  char path[4096];
  int fd = -1;
  unsigned char *residency = NULL;
  if (!minor) {
    snprintf(path, sizeof(path), "%s/memtrail-bench-faults-%ldMiB.dat", dir, mib);
    prepare_file(path, bytes);
    if (prepare) {
      printf("prepared %s\n", path);
      return 0;
    }
    fd = open(path, O_RDONLY);
    if (fd < 0) die(path);
    residency = malloc(pages);
    if (!residency) die("malloc");
  }

  double loop_ns = 0, loop_cpu_ns = 0;
  long resident_before = 0, minflt_total = 0, majflt_total = 0;
  volatile unsigned char sink = 0;  // the reads of the major mode must happen
  for (long round = 0; round < rounds; ++round) {
    char *area;
    if (minor) {
      area = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (area == MAP_FAILED) die("mmap");
      // Transparent huge pages would turn 512 faults into one: keep one fault per 4 KiB page.
      madvise(area, bytes, MADV_NOHUGEPAGE);
    } else {
      if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) die("posix_fadvise");
      area = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
      if (area == MAP_FAILED) die("mmap");
      if (!readahead && madvise(area, bytes, MADV_RANDOM) != 0) die("madvise");
      if (mincore(area, bytes, residency) != 0) die("mincore");
      for (size_t i = 0; i < pages; ++i) resident_before += residency[i] & 1;
    }
    long minflt0, majflt0, minflt1, majflt1;
    faults_so_far(&minflt0, &majflt0);
    double start = now_ns(), start_cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    if (minor) {
      for (size_t i = 0; i < pages; ++i) area[i * (size_t)page] = (char)i;
    } else {
      unsigned char sum = 0;
      for (size_t i = 0; i < pages; ++i) sum += (unsigned char)area[i * (size_t)page];
      sink += sum;
    }
    loop_ns += now_ns() - start;
    loop_cpu_ns += clock_ns(CLOCK_PROCESS_CPUTIME_ID) - start_cpu;
    faults_so_far(&minflt1, &majflt1);
    minflt_total += minflt1 - minflt0;
    majflt_total += majflt1 - majflt0;
    if (munmap(area, bytes) != 0) die("munmap");
  }
  if (fd >= 0) close(fd);
  free(residency);
  long faults = (long)pages * rounds, proc_minflt, proc_majflt;
  faults_so_far(&proc_minflt, &proc_majflt);
  printf(
      "ns_per_fault %.1f cpu_ns_per_fault %.1f faults %ld minflt %ld majflt %ld proc_minflt %ld "
      "proc_majflt %ld resident_before %ld wall_s %.3f\n",
      loop_ns / (double)faults, loop_cpu_ns / (double)faults, faults, minflt_total, majflt_total,
      proc_minflt, proc_majflt, resident_before, (now_ns() - began) / 1e9);
  return 0;
}
