// SPDX-License-Identifier: Apache-2.0
// OrderedDict's __sizeof__ read from machine code (python/sizeof_code.h): hand-assembled code
// of the shape CPython 3.11 compiles to, code it must refuse, and the installed interpreter's.
#include "python/sizeof_code.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "inspect/elf_file.h"
#include "python/cpython.h"

namespace memtrail::python {
namespace {

constexpr uint64_t kBase = 0x1000;
constexpr uint64_t kDictSizeOf = 0x2000;
constexpr uint64_t kLongFromSsize = 0x3000;

std::string named(uint64_t address) {
  if (address == kDictSizeOf) return "_PyDict_SizeOf";
  if (address == kLongFromSsize) return "PyLong_FromSsize_t";
  return "";
}

// A rel32 from the end of an instruction at `at` of `size` bytes to `target`.
std::vector<uint8_t> rel32(uint64_t at, size_t size, uint64_t target) {
  auto displacement = static_cast<int32_t>(static_cast<int64_t>(target - (at + size)));
  std::vector<uint8_t> bytes(4);
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<uint8_t>(displacement >> (8 * i));
  return bytes;
}

// odict_sizeof as GCC 12 compiles it (-O2): `first`, `fast` and `used` the fields' offsets,
// `node_shift` log2 of a node's bytes; the rel8 je skips the node term.
std::vector<uint8_t> odict_sizeof(uint8_t first, uint8_t fast, uint8_t used, uint8_t node_shift) {
  std::vector<uint8_t> code = {0x53, 0x48, 0x89, 0xfb, 0xe8};  // push %rbx; mov %rdi,%rbx; call
  auto call = rel32(kBase + 4, 5, kDictSizeOf);
  code.insert(code.end(), call.begin(), call.end());
  std::vector<uint8_t> rest = {0x48, 0x8b, 0x53, fast,              // mov fast(%rbx),%rdx
                               0x48, 0x83, 0x7b, first,      0x00,  // cmpq $0,first(%rbx)
                               0x48, 0x8d, 0x3c, 0xd0,              // lea (%rax,%rdx,8),%rdi
                               0x74, 0x0b,                          // je +11 (to pop)
                               0x48, 0x8b, 0x43, used,              // mov used(%rbx),%rax
                               0x48, 0xc1, 0xe0, node_shift,        // shl $node_shift,%rax
                               0x48, 0x01, 0xc7,                    // add %rax,%rdi
                               0x5b,                                // pop %rbx
                               0xe9};                               // jmp PyLong_FromSsize_t
  code.insert(code.end(), rest.begin(), rest.end());
  auto jump = rel32(kBase + code.size() - 1, 5, kLongFromSsize);
  code.insert(code.end(), jump.begin(), jump.end());
  code.resize(code.size() + 16, 0xcc);
  return code;
}

OrderedDictScan analyse(const std::vector<uint8_t>& code) {
  const auto& layout = built_layout();
  return analyse_ordered_dict_sizeof(code, kBase, named, layout.dict_used, layout.dict_size);
}

TEST(SizeofCode, ReadsTheOffsetsAndSizesOfOrderedDictsSizeof) {
  const auto& layout = built_layout();
  auto used = static_cast<uint8_t>(layout.dict_used);
  auto scan = analyse(odict_sizeof(0x30, 0x48, used, 5));
  ASSERT_TRUE(scan.sizing) << scan.refusal;
  EXPECT_EQ(scan.sizing->first, 0x30u);
  EXPECT_EQ(scan.sizing->fast_nodes_size, 0x48u);
  EXPECT_EQ(scan.sizing->fast_node_bytes, 8u);
  EXPECT_EQ(scan.sizing->node_bytes, 32u);
  // Other offsets and node sizes are read as they are, not assumed.
  scan = analyse(odict_sizeof(0x40, 0x38, used, 6));
  ASSERT_TRUE(scan.sizing) << scan.refusal;
  EXPECT_EQ(scan.sizing->first, 0x40u);
  EXPECT_EQ(scan.sizing->fast_nodes_size, 0x38u);
  EXPECT_EQ(scan.sizing->node_bytes, 64u);
}

TEST(SizeofCode, RefusesCodeOfAnotherShape) {
  const auto& layout = built_layout();
  auto used = static_cast<uint8_t>(layout.dict_used);
  // The node count from another field than ma_used.
  auto scan = analyse(odict_sizeof(0x30, 0x48, 0x18, 5));
  EXPECT_FALSE(scan.sizing);
  EXPECT_NE(scan.refusal.find("does not compute"), std::string::npos) << scan.refusal;
  // A field inside the dict's own struct taken for a private one.
  scan = analyse(odict_sizeof(0x30, 0x08, used, 5));
  EXPECT_FALSE(scan.sizing);
  // An instruction it does not follow (sub instead of add).
  auto code = odict_sizeof(0x30, 0x48, used, 5);
  code[33] = 0x29;  // add %rax,%rdi -> sub %rax,%rdi
  scan = analyse(code);
  EXPECT_FALSE(scan.sizing);
  EXPECT_NE(scan.refusal.find("does not follow `sub"), std::string::npos) << scan.refusal;
  // A call of an unknown function instead of _PyDict_SizeOf.
  code = odict_sizeof(0x30, 0x48, used, 5);
  auto other = rel32(kBase + 4, 5, 0x4000);
  std::copy(other.begin(), other.end(), code.begin() + 5);
  scan = analyse(code);
  EXPECT_FALSE(scan.sizing);
  EXPECT_NE(scan.refusal.find("calls an unknown function"), std::string::npos) << scan.refusal;
  // Code that never reaches PyLong_FromSsize_t.
  scan = analyse(std::vector<uint8_t>(64, 0x90));
  EXPECT_FALSE(scan.sizing);
  scan = analyse({0xc3});
  EXPECT_FALSE(scan.sizing);
}

// The installed interpreter's OrderedDict.__sizeof__, found through PyODict_Type's method
// table: read, with its two fields past the dict, one pointer a fast-nodes slot and a node
// of four words (next, prev, key, hash); its sizes are checked against sys.getsizeof in
// python_test (ObjectSizesAreSysGetsizeofs).
TEST(SizeofCode, ReadsTheInstalledInterpretersOrderedDict) {
  auto file = inspect::ElfFile::open("/usr/bin/python3.11");
  auto scan = scan_ordered_dict(file);
  ASSERT_TRUE(scan.sizing) << scan.refusal;
  const auto& layout = built_layout();
  EXPECT_GE(scan.sizing->first, layout.dict_size);
  EXPECT_GE(scan.sizing->fast_nodes_size, layout.dict_size);
  EXPECT_NE(scan.sizing->first, scan.sizing->fast_nodes_size);
  EXPECT_EQ(scan.sizing->fast_node_bytes, sizeof(void*));
  EXPECT_EQ(scan.sizing->node_bytes, 4 * sizeof(void*));
}

}  // namespace
}  // namespace memtrail::python
