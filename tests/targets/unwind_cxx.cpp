// SPDX-License-Identifier: Apache-2.0
// A C++ call chain for the DWARF unwinding tests (memtrail leaks --cxx --unwind), built -O2
// -fomit-frame-pointer like unwind_chain.c:
//
//   main -> Service::handle -> Parser::parse -> make_node -> new Node (libstdc++'s operator new)
//
// leaks kUnwindCxxNodes nodes of sizeof(Node) bytes; Parser::discard allocates and deletes:
// it must not appear.
//
// Usage: unwind_cxx. Same protocol as leaky.c: prints "ready PID", waits for a line on stdin,
// runs, prints "line make_node N" (N: the line of the new expression) and "done", then waits
// for "quit" or end of input.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

// Every function of the chain stays a real frame (see unwind_chain.c).
#define CHAIN_FUNCTION __attribute__((noinline, noclone, used))
#define AFTER_CALL() __asm__ volatile("" ::: "memory")

// The numbers the test asserts (tests/integration/unwind_test.cpp has the same ones).
constexpr int kUnwindCxxNodes = 6;
constexpr int kUnwindCxxDiscarded = 20;

struct Node {
  long id;
  char name[88];
  Node* next;
};
static_assert(sizeof(Node) == 104, "unwind_test.cpp expects 104-byte nodes");

Node* volatile kept_nodes;  // the leaked list: visible, so not optimized away
void* volatile sink;
int new_line;  // source line of the new expression in make_node

CHAIN_FUNCTION Node* make_node(int id) {
  volatile char scratch[120];
  for (int i = 0; i < static_cast<int>(sizeof(scratch)); ++i)
    scratch[i] = static_cast<char>(i + id);
  new_line = __LINE__ + 1;
  Node* node = new Node;
  AFTER_CALL();
  node->id = id;
  for (int i = 0; i < static_cast<int>(sizeof(node->name)); ++i) node->name[i] = scratch[i];
  node->next = nullptr;
  return node;
}

class Parser {
 public:
  CHAIN_FUNCTION int parse(int count);
  CHAIN_FUNCTION void discard(int count);
};

int Parser::parse(int count) {
  volatile char scratch[232];
  for (int i = 0; i < static_cast<int>(sizeof(scratch)); ++i) scratch[i] = static_cast<char>(i);
  int made = 0;
  for (int i = 0; i < count; ++i) {
    Node* node = make_node(i);  // one call instruction: one stack, one site
    AFTER_CALL();
    node->next = kept_nodes;
    kept_nodes = node;
    made += scratch[i] != 0x7f ? 1 : 0;
  }
  return made;
}

// new and delete: nothing outstanding.
void Parser::discard(int count) {
  for (int i = 0; i < count; ++i) {
    Node* node = new Node;
    AFTER_CALL();
    sink = node;  // escapes: the new/delete pair is not elided
    delete node;
    AFTER_CALL();
  }
}

class Service {
 public:
  CHAIN_FUNCTION int handle(int requests);

 private:
  Parser parser_;
};

int Service::handle(int requests) {
  volatile char scratch[168];
  for (int i = 0; i < static_cast<int>(sizeof(scratch)); ++i) scratch[i] = static_cast<char>(i ^ 3);
  int made = parser_.parse(requests);
  AFTER_CALL();
  parser_.discard(kUnwindCxxDiscarded);
  AFTER_CALL();
  return made + (scratch[0] == 0x7f ? 1 : 0);
}

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::printf("ready %d\n", static_cast<int>(getpid()));
  std::string go;
  if (!std::getline(std::cin, go)) return 3;
  Service service;
  int made = service.handle(kUnwindCxxNodes);
  AFTER_CALL();
  if (made != kUnwindCxxNodes) return 4;
  std::printf("line make_node %d\n", new_line);
  std::printf("done\n");
  std::string rest;
  while (std::getline(std::cin, rest) && rest != "quit") {
  }
  return 0;
}
