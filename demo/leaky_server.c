// SPDX-License-Identifier: Apache-2.0
// memtrail's demo: a toy request handler with one real leak among correctly freed memory.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct session {
  char user[32];
  char *history;
};

// The leak: every request caches a copy of the session, and nothing ever evicts it.
static struct session **cache;
static size_t cache_size;

static void remember_session(const struct session *session) {
  struct session *copy = malloc(sizeof(*copy));
  *copy = *session;
  copy->history = strdup(session->history);
  cache = realloc(cache, (cache_size + 1) * sizeof(*cache));
  cache[cache_size++] = copy;
}

// Correct: the response buffer is freed once the response is "sent".
static size_t render_response(const struct session *session) {
  char *body = malloc(4096);
  int length = snprintf(body, 4096, "hello %s, you said %s", session->user, session->history);
  free(body);
  return (size_t)length;
}

static void handle_request(int id) {
  struct session session;
  snprintf(session.user, sizeof(session.user), "user%d", id % 100);
  session.history = malloc(256);
  snprintf(session.history, 256, "request %d", id);
  render_response(&session);
  remember_session(&session);
  free(session.history);
}

int main(void) {
  printf("demo: leaky server running as pid %d\n", getpid());
  fflush(stdout);
  struct timespec pause = {0, 20 * 1000 * 1000};  // 50 requests per second
  for (int id = 0;; ++id) {
    handle_request(id);
    nanosleep(&pause, NULL);
  }
}
