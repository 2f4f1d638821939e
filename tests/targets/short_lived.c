// SPDX-License-Identifier: Apache-2.0
// A short-lived glibc program that frees all it allocates: lives SECONDS (default 0.3), exits.
#include <stdlib.h>
#include <time.h>

static void pause_for(double seconds) {
  struct timespec wait = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  nanosleep(&wait, NULL);
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 0.3;
  pause_for(seconds / 2);
  // Allocated and freed while memtrail traces it: nothing is outstanding when it exits.
  void *blocks[16];
  for (int i = 0; i < 16; ++i) blocks[i] = malloc(64 + (size_t)i * 16);
  for (int i = 0; i < 16; ++i) free(blocks[i]);
  pause_for(seconds / 2);
  return 0;
}
