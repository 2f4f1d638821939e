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

// deque_sizeof as GCC 12 compiles it (-O2, Debian's python3.11): the basic size read from the
// object's type, plus (leftindex + ob_size + 63) / 64 blocks of `block` bytes each.
std::vector<uint8_t> deque_sizeof(uint32_t block) {
  const auto& layout = built_layout();
  auto type = static_cast<uint8_t>(layout.object_type);
  auto basic = static_cast<uint8_t>(layout.type_basicsize);
  std::vector<uint8_t> code = {0x48, 0x89, 0xf8,        // mov %rdi,%rax
                               0x48, 0x8b, 0x7f, 0x10,  // mov 0x10(%rdi),%rdi
                               0x48, 0x03, 0x78, 0x28,  // add 0x28(%rax),%rdi
                               0x48, 0x8b, 0x40, type,  // mov type(%rax),%rax
                               0x48, 0x83, 0xc7, 0x3f,  // add $0x3f,%rdi
                               0x48, 0xc1, 0xef, 0x06,  // shr $6,%rdi
                               0x48, 0x69, 0xff};       // imul $block,%rdi,%rdi
  for (int i = 0; i < 4; ++i) code.push_back(static_cast<uint8_t>(block >> (8 * i)));
  std::vector<uint8_t> rest = {0x48, 0x03, 0x78, basic, 0xe9};  // add basic(%rax),%rdi; jmp
  code.insert(code.end(), rest.begin(), rest.end());
  auto jump = rel32(kBase + code.size() - 1, 5, kLongFromSsize);
  code.insert(code.end(), jump.begin(), jump.end());
  code.resize(code.size() + 16, 0xcc);
  return code;
}

BufferedSizeofScan analyse_buffered(const std::vector<uint8_t>& code, int64_t basic_size = 632) {
  const auto& layout = built_layout();
  return analyse_buffered_sizeof(code, kBase, named, layout.object_type, layout.type_basicsize,
                                 basic_size, 512);
}

// A deque's size is its basic size and its blocks: each over 512 bytes, malloc's, so its own
// block is exactly what memtrail charges; the block's size is read, not assumed.
TEST(SizeofCode, ReadsADequesBlocksAsBuffersOverPymallocs) {
  auto scan = analyse_buffered(deque_sizeof(528));
  EXPECT_TRUE(scan.exact) << scan.refusal;
  EXPECT_EQ(scan.unit_bytes, 528u);
  scan = analyse_buffered(deque_sizeof(1040));
  EXPECT_TRUE(scan.exact) << scan.refusal;
  EXPECT_EQ(scan.unit_bytes, 1040u);
}

// Blocks pymalloc could serve (512 bytes or less), a basic size not counted or more added,
// another function called: not exact, and why.
TEST(SizeofCode, RefusesBuffersPymallocMayServe) {
  auto scan = analyse_buffered(deque_sizeof(512));
  EXPECT_FALSE(scan.exact);
  EXPECT_NE(scan.refusal.find("units of 512 bytes"), std::string::npos) << scan.refusal;
  // add basic(%rax) -> add 0x30(%rax): a field of the type that is not its basic size.
  constexpr size_t kAddBasic = 30, kJump = 34;  // where the two last instructions start
  auto code = deque_sizeof(528);
  code[kAddBasic + 3] = 0x30;
  scan = analyse_buffered(code);
  EXPECT_FALSE(scan.exact);
  EXPECT_FALSE(scan.refusal.empty());
  // add basic(%rax),%rdi -> add $0x10,%rdi: 16 bytes more than the type's basic size.
  code = deque_sizeof(528);
  code[kAddBasic + 1] = 0x83;
  code[kAddBasic + 2] = 0xc7;
  code[kAddBasic + 3] = 0x10;
  scan = analyse_buffered(code);
  EXPECT_FALSE(scan.exact);
  EXPECT_NE(scan.refusal.find("basic size"), std::string::npos) << scan.refusal;
  // The same constant as the type's own basic size is its basic size.
  scan = analyse_buffered(code, 16);
  EXPECT_TRUE(scan.exact) << scan.refusal;
  // A tail call of an unknown function instead of PyLong_FromSsize_t.
  code = deque_sizeof(528);
  auto other = rel32(kBase + kJump, 5, 0x800);  // not a forward jump within it
  std::copy(other.begin(), other.end(), code.begin() + kJump + 1);
  scan = analyse_buffered(code);
  EXPECT_FALSE(scan.exact);
  EXPECT_NE(scan.refusal.find("calls an unknown function"), std::string::npos) << scan.refusal;
  // OrderedDict's code: a dict's size and small nodes, not a basic size and large buffers.
  scan =
      analyse_buffered(odict_sizeof(0x30, 0x48, static_cast<uint8_t>(built_layout().dict_used), 5));
  EXPECT_FALSE(scan.exact);
}

}  // namespace
}  // namespace memtrail::python
