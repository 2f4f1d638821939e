// SPDX-License-Identifier: Apache-2.0
// A custom allocator in its own library (not malloc): what --allocator is for.
#include <stddef.h>
#include <stdint.h>

// A bump allocator over a static arena: addresses are never reused, frees only count.
static _Alignas(16) unsigned char arena[1 << 20];
static size_t used;
static size_t freed;

__attribute__((noinline)) void *pool_alloc(size_t size) {
  size_t rounded = (size + 15) & ~(size_t)15;
  if (used + rounded > sizeof(arena)) return NULL;
  void *block = arena + used;
  used += rounded;
  return block;
}

__attribute__((noinline)) void pool_free(void *block) {
  if (block) freed += 1;
}
