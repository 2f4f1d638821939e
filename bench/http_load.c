// SPDX-License-Identifier: Apache-2.0
// An HTTP/1.1 load generator for bench/python_web.py: CONNECTIONS keep-alive connections to
// 127.0.0.1:PORT, one thread each, each sending a POST and reading its whole response before the
// next (a closed loop: the server's speed sets the rate). After WARMUP seconds it measures for
// SECONDS: requests, wall time, latency percentiles, its own CPU, and the server's CPU
// (utime + stime of /proc/SERVER_PID/stat, every thread of it, read at the window's edges).
//
//   memtrail-bench-http-load PORT SERVER_PID BODIES_FILE CONNECTIONS WARMUP SECONDS
//
// BODIES_FILE holds one request body a line; connection k starts at body k and cycles. Prints
// "requests=N total_requests=M seconds=S server_cpu_ns=C client_cpu_ns=D p50_us=X p99_us=Y".
// Exits 1, with one line on stderr, on any error (a refused connection, a response other than
// 200 with a JSON body, a closed connection).
#define _GNU_SOURCE  // strcasestr, asprintf
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { WARMING = 0, MEASURING = 1, STOPPING = 2 };

struct request {
  char *text;
  size_t length;
};

struct connection {
  pthread_t thread;
  int index;
  uint64_t warm_requests;
  uint64_t measured_requests;
  uint32_t *latencies_us;  // of the measured requests
  size_t latencies_capacity;
  char error[160];
};

static struct request *requests;
static size_t request_count;
static int port;
static atomic_int phase = WARMING;
static atomic_int failed;

static void die(const char *what) {
  fprintf(stderr, "http-load: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

static void sleep_seconds(double seconds) {
  struct timespec span = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&span, &span) != 0 && errno == EINTR) {
  }
}

// Every thread of the server, user and system time (the traps' kernel time is system time).
static uint64_t server_cpu_ns(const char *stat_path) {
  char text[1024];
  FILE *file = fopen(stat_path, "r");
  if (file == NULL) die(stat_path);
  size_t length = fread(text, 1, sizeof(text) - 1, file);
  fclose(file);
  text[length] = '\0';
  // Fields after the command name, which may hold spaces and ')': state is field 3, utime 14.
  char *rest = strrchr(text, ')');
  unsigned long long utime = 0, stime = 0;
  if (rest == NULL || sscanf(rest + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                             &utime, &stime) != 2) {
    fprintf(stderr, "http-load: cannot read the CPU times in %s\n", stat_path);
    exit(1);
  }
  return (utime + stime) * (1000000000ull / (unsigned long long)sysconf(_SC_CLK_TCK));
}

static uint64_t own_cpu_ns(void) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return ((uint64_t)usage.ru_utime.tv_sec + (uint64_t)usage.ru_stime.tv_sec) * 1000000000u +
         ((uint64_t)usage.ru_utime.tv_usec + (uint64_t)usage.ru_stime.tv_usec) * 1000u;
}

static int fail(struct connection *connection, const char *what) {
  snprintf(connection->error, sizeof(connection->error), "connection %d: %s%s%s", connection->index,
           what, errno ? ": " : "", errno ? strerror(errno) : "");
  atomic_store(&failed, 1);
  return -1;
}

static int send_all(int socket_fd, const char *data, size_t length) {
  while (length > 0) {
    ssize_t sent = send(socket_fd, data, length, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return -1;
    data += sent;
    length -= (size_t)sent;
  }
  return 0;
}

// Reads one response (headers, then Content-Length bytes of body) into buffer; 0 on a 200 with
// a JSON body.
static int read_response(struct connection *connection, int socket_fd, char *buffer,
                         size_t capacity) {
  size_t have = 0, header_length = 0, needed = 0;
  for (;;) {
    ssize_t got = recv(socket_fd, buffer + have, capacity - 1 - have, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return fail(connection, "recv");
    if (got == 0) {
      errno = 0;
      return fail(connection, "the server closed the connection");
    }
    have += (size_t)got;
    buffer[have] = '\0';
    if (needed == 0) {
      char *end = strstr(buffer, "\r\n\r\n");
      if (end == NULL) {
        if (have == capacity - 1) {
          errno = 0;
          return fail(connection, "response headers too long");
        }
        continue;
      }
      errno = 0;
      if (strncmp(buffer, "HTTP/1.1 200 ", 13) != 0)
        return fail(connection, "a response other than HTTP/1.1 200");
      char *length_field = strcasestr(buffer, "\r\nContent-Length:");
      if (length_field == NULL || length_field > end)
        return fail(connection, "a response without Content-Length");
      size_t body = strtoul(length_field + 17, NULL, 10);
      header_length = (size_t)(end + 4 - buffer);
      needed = header_length + body;
      if (needed >= capacity || body == 0)
        return fail(connection, "a response body too long or empty");
    }
    if (have > needed) {
      errno = 0;
      return fail(connection, "more bytes than one response");
    }
    if (have == needed) {
      errno = 0;
      if (buffer[header_length] != '{') return fail(connection, "a response body that is not JSON");
      return 0;
    }
  }
}

static void *run_connection(void *argument) {
  struct connection *connection = argument;
  int socket_fd = socket(AF_INET, SOCK_STREAM, 0);
  if (socket_fd < 0) {
    fail(connection, "socket");
    return NULL;
  }
  int one = 1;
  setsockopt(socket_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  struct sockaddr_in address = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(socket_fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
    fail(connection, "connect");
    close(socket_fd);
    return NULL;
  }
  static const size_t capacity = 65536;
  char *buffer = malloc(capacity);
  if (buffer == NULL) {
    fail(connection, "malloc");
    close(socket_fd);
    return NULL;
  }
  size_t next = (size_t)connection->index % request_count;
  while (atomic_load_explicit(&phase, memory_order_relaxed) != STOPPING &&
         !atomic_load_explicit(&failed, memory_order_relaxed)) {
    uint64_t started = now_ns();
    if (send_all(socket_fd, requests[next].text, requests[next].length) != 0) {
      fail(connection, "send");
      break;
    }
    if (read_response(connection, socket_fd, buffer, capacity) != 0) break;
    next = (next + 1) % request_count;
    int current = atomic_load_explicit(&phase, memory_order_relaxed);
    if (current == WARMING) {
      connection->warm_requests++;
    } else if (current == MEASURING) {
      if (connection->measured_requests == connection->latencies_capacity) {
        size_t grown = connection->latencies_capacity * 2 + 4096;
        uint32_t *latencies = realloc(connection->latencies_us, grown * sizeof(*latencies));
        if (latencies == NULL) {
          fail(connection, "realloc");
          break;
        }
        connection->latencies_us = latencies;
        connection->latencies_capacity = grown;
      }
      connection->latencies_us[connection->measured_requests++] =
          (uint32_t)((now_ns() - started) / 1000);
    }
  }
  free(buffer);
  close(socket_fd);
  return NULL;
}

static void read_bodies(const char *path) {
  FILE *file = fopen(path, "r");
  if (file == NULL) die(path);
  char *line = NULL;
  size_t line_capacity = 0;
  ssize_t length;
  while ((length = getline(&line, &line_capacity, file)) > 0) {
    if (line[length - 1] == '\n') line[--length] = '\0';
    if (length == 0) continue;
    requests = realloc(requests, (request_count + 1) * sizeof(*requests));
    char *text = NULL;
    int written = asprintf(&text,
                           "POST /order HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Content-Type: application/json\r\nContent-Length: %zd\r\n\r\n%s",
                           length, line);
    if (requests == NULL || written < 0) die("out of memory");
    requests[request_count].text = text;
    requests[request_count].length = (size_t)written;
    request_count++;
  }
  free(line);
  fclose(file);
  if (request_count == 0) {
    fprintf(stderr, "http-load: %s holds no request body\n", path);
    exit(1);
  }
}

static int compare_latencies(const void *left, const void *right) {
  uint32_t a = *(const uint32_t *)left, b = *(const uint32_t *)right;
  return (a > b) - (a < b);
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s PORT SERVER_PID BODIES_FILE CONNECTIONS WARMUP SECONDS\n", argv[0]);
    return 2;
  }
  port = atoi(argv[1]);
  char stat_path[64];
  snprintf(stat_path, sizeof(stat_path), "/proc/%d/stat", atoi(argv[2]));
  read_bodies(argv[3]);
  int connection_count = atoi(argv[4]);
  double warmup = atof(argv[5]), seconds = atof(argv[6]);
  if (port <= 0 || port > 65535 || connection_count <= 0 || connection_count > 1024 || warmup < 0 ||
      seconds <= 0) {
    fprintf(stderr,
            "http-load: bad arguments (port 1-65535, 1-1024 connections, "
            "seconds > 0)\n");
    return 2;
  }
  struct connection *connections = calloc((size_t)connection_count, sizeof(*connections));
  if (connections == NULL) die("calloc");
  for (int i = 0; i < connection_count; i++) {
    connections[i].index = i;
    errno = pthread_create(&connections[i].thread, NULL, run_connection, &connections[i]);
    if (errno != 0) die("pthread_create");
  }
  sleep_seconds(warmup);
  uint64_t server_start = server_cpu_ns(stat_path), own_start = own_cpu_ns();
  uint64_t start = now_ns();
  atomic_store(&phase, MEASURING);
  sleep_seconds(seconds);
  atomic_store(&phase, STOPPING);
  uint64_t elapsed = now_ns() - start;
  uint64_t server_used = server_cpu_ns(stat_path) - server_start;
  uint64_t own_used = own_cpu_ns() - own_start;
  uint64_t measured = 0, total = 0;
  for (int i = 0; i < connection_count; i++) {
    pthread_join(connections[i].thread, NULL);
    measured += connections[i].measured_requests;
    total += connections[i].warm_requests + connections[i].measured_requests;
  }
  for (int i = 0; i < connection_count; i++) {
    if (connections[i].error[0] != '\0') {
      fprintf(stderr, "http-load: %s\n", connections[i].error);
      return 1;
    }
  }
  if (measured == 0) {
    fprintf(stderr, "http-load: no request completed in the measured %.1f s\n", seconds);
    return 1;
  }
  uint32_t *latencies = malloc(measured * sizeof(*latencies));
  if (latencies == NULL) die("malloc");
  size_t filled = 0;
  for (int i = 0; i < connection_count; i++) {
    memcpy(latencies + filled, connections[i].latencies_us,
           connections[i].measured_requests * sizeof(*latencies));
    filled += connections[i].measured_requests;
  }
  qsort(latencies, measured, sizeof(*latencies), compare_latencies);
  printf(
      "requests=%llu total_requests=%llu seconds=%.6f server_cpu_ns=%llu "
      "client_cpu_ns=%llu p50_us=%u p99_us=%u\n",
      (unsigned long long)measured, (unsigned long long)total, (double)elapsed / 1e9,
      (unsigned long long)server_used, (unsigned long long)own_used, latencies[measured / 2],
      latencies[measured * 99 / 100]);
  return 0;
}
