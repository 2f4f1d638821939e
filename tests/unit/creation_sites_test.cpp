// SPDX-License-Identifier: Apache-2.0
// The creation-site scan (python/creation_sites.h): on hand-assembled code whose sites are
// known exactly, on code it must refuse, and on the installed /usr/bin/python3.11.
#include "python/creation_sites.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "inspect/elf_file.h"
#include "python/cpython.h"

namespace memtrail::python {
namespace {

constexpr uint64_t kBase = 0x1000;
constexpr uint64_t kFlag = 0x5004;

// Code at kBase, padded with int3; `put` writes bytes at an address, with a rip-relative
// displacement to kFlag patched in at `displacement_at` for an instruction ending at `end`.
struct Code {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(0x100, 0xcc);
  void put(uint64_t address, std::vector<uint8_t> insn) {
    std::memcpy(bytes.data() + (address - kBase), insn.data(), insn.size());
  }
  void flag_displacement(uint64_t displacement_at, uint64_t end) {
    auto displacement = static_cast<int32_t>(static_cast<int64_t>(kFlag - end));
    std::memcpy(bytes.data() + (displacement_at - kBase), &displacement, 4);
  }
};

// _Py_NewReference as GCC lays it out: the flag compared in place, the tracemalloc call cold.
void out_of_line(Code& code) {
  code.put(0x1000, {0x83, 0x3d, 0, 0, 0, 0, 0x00});  // cmpl $0, tracing(%rip)
  code.flag_displacement(0x1002, 0x1007);
  code.put(0x1007, {0x75, 0x08});                                // jne 0x1011
  code.put(0x1009, {0x48, 0xc7, 0x07, 0x01, 0x00, 0x00, 0x00});  // movq $1, (%rdi)
  code.put(0x1010, {0xc3});                                      // ret
  code.put(0x1011, {0xe8, 0x00, 0x00, 0x00, 0x00});              // call (tracemalloc)
  code.put(0x1016, {0xeb, 0xf1});                                // jmp 0x1009
}

// An inlined one: the flag loaded into a register and tested, the store after the call.
void inlined(Code& code) {
  code.put(0x1020, {0x8b, 0x05, 0, 0, 0, 0});  // mov tracing(%rip), %eax
  code.flag_displacement(0x1022, 0x1026);
  code.put(0x1026, {0x85, 0xc0});                                // test %eax, %eax
  code.put(0x1028, {0x74, 0x05});                                // je 0x102f
  code.put(0x102a, {0xe8, 0x00, 0x00, 0x00, 0x00});              // call (tracemalloc)
  code.put(0x102f, {0x48, 0xc7, 0x03, 0x01, 0x00, 0x00, 0x00});  // movq $1, (%rbx)
  code.put(0x1036, {0xc3});
}

// The object's register is overwritten between the branch and the store: at the branch it
// does not hold the object, so this is no site.
void clobbered(Code& code) {
  code.put(0x1040, {0x83, 0x3d, 0, 0, 0, 0, 0x00});  // cmpl $0, tracing(%rip)
  code.flag_displacement(0x1042, 0x1047);
  code.put(0x1047, {0x75, 0x0a});                                // jne 0x1053
  code.put(0x1049, {0x48, 0x89, 0xc3});                          // mov %rax, %rbx
  code.put(0x104c, {0x48, 0xc7, 0x03, 0x01, 0x00, 0x00, 0x00});  // movq $1, (%rbx)
  code.put(0x1053, {0xc3});
}

TEST(CreationSites, FindsEachSiteWithItsBranchStoreAndRegister) {
  Code code;
  out_of_line(code);
  inlined(code);
  clobbered(code);
  auto scan = scan_creation_sites(code.bytes, kBase, TracingFlag{kFlag, 0, {}}, 0x1000, 0x18);
  EXPECT_EQ(scan.refusal, "");
  EXPECT_EQ(scan.flag_reads, 3u);
  ASSERT_EQ(scan.sites.size(), 2u);
  EXPECT_EQ(scan.sites[0].branch, 0x1007u);
  EXPECT_EQ(scan.sites[0].store, 0x1009u);
  EXPECT_EQ(scan.sites[0].object, ObjectRegister::kRdi);
  EXPECT_EQ(scan.sites[1].branch, 0x1028u);
  EXPECT_EQ(scan.sites[1].store, 0x102fu);
  EXPECT_EQ(scan.sites[1].object, ObjectRegister::kRbx);
}

TEST(CreationSites, RefusesCodeWithoutAGuardedStore) {
  Code code;
  clobbered(code);
  auto scan = scan_creation_sites(code.bytes, kBase, TracingFlag{kFlag, 0, {}}, 0x1040, 0x14);
  EXPECT_TRUE(scan.sites.empty());
  EXPECT_EQ(scan.flag_reads, 1u);
  EXPECT_NE(scan.refusal.find("guards a store of ob_refcnt = 1"), std::string::npos)
      << scan.refusal;
}

TEST(CreationSites, RefusesCodeThatNeverReadsTheFlag) {
  Code code;  // int3 only
  auto scan = scan_creation_sites(code.bytes, kBase, TracingFlag{kFlag, 0, {}}, 0x1000, 0x10);
  EXPECT_TRUE(scan.sites.empty());
  EXPECT_EQ(scan.refusal, "no instruction reads _Py_tracemalloc_config.tracing");
}

TEST(CreationSites, RefusesWhenNewReferenceItselfIsNotFound) {
  Code code;
  inlined(code);  // a site, but not in the function named _Py_NewReference
  auto scan = scan_creation_sites(code.bytes, kBase, TracingFlag{kFlag, 0, {}}, 0x1000, 0x18);
  EXPECT_TRUE(scan.sites.empty());
  EXPECT_NE(scan.refusal.find("_Py_NewReference"), std::string::npos) << scan.refusal;
}

// A libpython built with -fPIC (pyenv's, asdf's): the flag read through _Py_tracemalloc_config's
// address, loaded from its GOT slot or by a lea, its argument kept in rbx across the call.
constexpr uint64_t kConfig = kFlag - 4;
constexpr uint64_t kConfigSlot = 0x5100;

void rip_relative(Code& code, uint64_t displacement_at, uint64_t end, uint64_t target) {
  auto displacement = static_cast<int32_t>(static_cast<int64_t>(target - end));
  std::memcpy(code.bytes.data() + (displacement_at - kBase), &displacement, 4);
}

// `copy_modrm`: the ModRM of the mov that keeps the argument in rbx (0xfb: mov %rdi, %rbx).
void position_independent(Code& code, uint8_t copy_modrm = 0xfb) {
  code.put(0x1000, {0x48, 0x8b, 0x05, 0, 0, 0, 0});  // mov slot(%rip), %rax
  rip_relative(code, 0x1003, 0x1007, kConfigSlot);
  code.put(0x1007, {0x53});                                      // push %rbx
  code.put(0x1008, {0x48, 0x89, copy_modrm});                    // mov %rdi, %rbx
  code.put(0x100b, {0x8b, 0x40, 0x04});                          // mov 4(%rax), %eax
  code.put(0x100e, {0x85, 0xc0});                                // test %eax, %eax
  code.put(0x1010, {0x75, 0x09});                                // jne 0x101b
  code.put(0x1012, {0x48, 0xc7, 0x03, 0x01, 0x00, 0x00, 0x00});  // movq $1, (%rbx)
  code.put(0x1019, {0x5b});                                      // pop %rbx
  code.put(0x101a, {0xc3});                                      // ret
  code.put(0x101b, {0xe8, 0x00, 0x00, 0x00, 0x00});              // call (tracemalloc)
  code.put(0x1020, {0xeb, 0xf0});                                // jmp 0x1012
  // Inlined, the load relaxed by the linker to a lea, the flag compared in place.
  code.put(0x1030, {0x48, 0x8d, 0x15, 0, 0, 0, 0});  // lea config(%rip), %rdx
  rip_relative(code, 0x1033, 0x1037, kConfig);
  code.put(0x1037, {0x83, 0x7a, 0x04, 0x00});                    // cmpl $0, 4(%rdx)
  code.put(0x103b, {0x74, 0x05});                                // je 0x1042
  code.put(0x103d, {0xe8, 0x00, 0x00, 0x00, 0x00});              // call (tracemalloc)
  code.put(0x1042, {0x48, 0xc7, 0x06, 0x01, 0x00, 0x00, 0x00});  // movq $1, (%rsi)
  code.put(0x1049, {0xc3});
  // The loaded register overwritten before the read: not the flag.
  code.put(0x1050, {0x48, 0x8b, 0x05, 0, 0, 0, 0});  // mov slot(%rip), %rax
  rip_relative(code, 0x1053, 0x1057, kConfigSlot);
  code.put(0x1057, {0x48, 0x89, 0xd8});                          // mov %rbx, %rax
  code.put(0x105a, {0x8b, 0x40, 0x04});                          // mov 4(%rax), %eax
  code.put(0x105d, {0x85, 0xc0});                                // test %eax, %eax
  code.put(0x105f, {0x75, 0x07});                                // jne 0x1068
  code.put(0x1061, {0x48, 0xc7, 0x07, 0x01, 0x00, 0x00, 0x00});  // movq $1, (%rdi)
  code.put(0x1068, {0xc3});
}

TEST(CreationSites, FindsTheFlagReadThroughTheConfigsGotSlotOrLea) {
  Code code;
  position_independent(code);
  auto scan = scan_creation_sites(code.bytes, kBase, TracingFlag{kFlag, kConfig, {kConfigSlot}},
                                  0x1000, 0x22);
  EXPECT_EQ(scan.refusal, "");
  EXPECT_EQ(scan.flag_reads, 2u);
  ASSERT_EQ(scan.sites.size(), 2u);
  EXPECT_EQ(scan.sites[0].branch, 0x1010u);
  EXPECT_EQ(scan.sites[0].store, 0x1012u);
  EXPECT_EQ(scan.sites[0].object, ObjectRegister::kRbx);
  EXPECT_EQ(scan.sites[1].branch, 0x103bu);
  EXPECT_EQ(scan.sites[1].store, 0x1042u);
  EXPECT_EQ(scan.sites[1].object, ObjectRegister::kRsi);
  // Without the slot and the config's address, the same code reads no flag.
  auto blind = scan_creation_sites(code.bytes, kBase, TracingFlag{kFlag, 0, {}}, 0x1000, 0x22);
  EXPECT_EQ(blind.flag_reads, 0u);
  EXPECT_EQ(blind.refusal, "no instruction reads _Py_tracemalloc_config.tracing");
}

TEST(CreationSites, RefusesANewReferenceThatStoresIntoAnotherRegisterThanItsArgument) {
  Code code;
  position_independent(code, 0xf3);  // mov %rsi, %rbx: rbx is not the argument
  auto scan = scan_creation_sites(code.bytes, kBase, TracingFlag{kFlag, kConfig, {kConfigSlot}},
                                  0x1000, 0x22);
  EXPECT_TRUE(scan.sites.empty());
  EXPECT_NE(scan.refusal.find("_Py_NewReference does not check"), std::string::npos)
      << scan.refusal;
}

// Debian 12's python3.11 (3.11.2, LTO, no debug info): the sites lie in the functions that
// create objects, each names its register, and every probed instruction is a conditional
// branch (je/jne: emulated by the kernel's uprobes), every store a `movq $1, (reg)`.
TEST(CreationSites, InstalledPython311) {
  const std::string path = "/usr/bin/python3.11";
  auto file = inspect::ElfFile::open(path);
  auto scan = scan_interpreter(file);
  ASSERT_EQ(scan.refusal, "");
  // Measured on 3.11.2: 263 branches leading to 209 stores, from 314 reads of the flag.
  RecordProperty("sites", static_cast<int>(scan.sites.size()));
  RecordProperty("flag_reads", static_cast<int>(scan.flag_reads));
  std::set<uint64_t> stores;
  for (const auto& site : scan.sites) stores.insert(site.store);
  RecordProperty("stores", static_cast<int>(stores.size()));
  EXPECT_GE(scan.sites.size(), 200u);
  EXPECT_LE(scan.sites.size(), scan.flag_reads);
  auto in_function = [&](const char* name, ObjectRegister* reg = nullptr) {
    auto function = file.find_function(name);
    if (!function) return false;
    for (const auto& site : scan.sites) {
      if (site.branch >= function->address && site.branch < function->address + function->size) {
        if (reg) *reg = site.object;
        return true;
      }
    }
    return false;
  };
  ObjectRegister reg{};
  ASSERT_TRUE(in_function("_Py_NewReference", &reg));
  EXPECT_EQ(reg, ObjectRegister::kRdi);
  for (const char* function : {"PyUnicode_New", "PyFloat_FromDouble", "_PyObject_GC_New",
                               "PyType_GenericAlloc", "PyBytes_FromStringAndSize"}) {
    EXPECT_TRUE(in_function(function)) << function;
  }
  for (const auto& site : scan.sites) {
    auto branch = file.read_code(site.branch, 2);
    ASSERT_EQ(branch.size(), 2u);
    bool short_jcc = branch[0] == 0x74 || branch[0] == 0x75;
    bool near_jcc = branch[0] == 0x0f && (branch[1] == 0x84 || branch[1] == 0x85);
    EXPECT_TRUE(short_jcc || near_jcc) << std::hex << site.branch;
    auto store = file.read_code(site.store, 8);
    ASSERT_EQ(store.size(), 8u);
    // REX.W (+B for r8-r15), C7 /0, then ModRM: the immediate 1 follows.
    EXPECT_TRUE(store[0] == 0x48 || store[0] == 0x49) << std::hex << site.store;
    EXPECT_EQ(store[1], 0xc7) << std::hex << site.store;
    // ModRM: mod 00 (no displacement) or 01 with a displacement of 0 (rbp, r13 need one), reg
    // 0, rm the object's register (REX.B its bit 3); the immediate is 1. That register is the
    // one the probe reads at the branch.
    // r12 (rm 4 with REX.B) takes a SIB byte, 0x24: no index, that base.
    auto wide = file.read_code(site.store, 10);
    ASSERT_EQ(wide.size(), 10u);
    unsigned mod = wide[2] >> 6;
    size_t at = 3;
    if ((wide[2] & 7) == 4) {
      EXPECT_EQ(wide[at++], 0x24) << std::hex << site.store;
    }
    EXPECT_TRUE(mod == 0 || (mod == 1 && wide[at] == 0)) << std::hex << site.store;
    if (mod == 1) ++at;
    EXPECT_EQ((wide[2] >> 3) & 7, 0) << std::hex << site.store;
    uint32_t immediate = 0;
    std::memcpy(&immediate, wide.data() + at, 4);
    EXPECT_EQ(immediate, 1u) << std::hex << site.store;
    unsigned encoded = (wide[2] & 7) | ((wide[0] & 1) << 3);
    // x86 register numbers (rax 0, rcx 1, rdx 2, rbx 3, rsp 4, rbp 5, rsi 6, rdi 7, r8-r15) as
    // the scan names them.
    static const ObjectRegister by_number[16] = {ObjectRegister::kRax,
                                                 ObjectRegister::kRcx,
                                                 ObjectRegister::kRdx,
                                                 ObjectRegister::kRbx,
                                                 ObjectRegister::kRax /* rsp: never an object */,
                                                 ObjectRegister::kRbp,
                                                 ObjectRegister::kRsi,
                                                 ObjectRegister::kRdi,
                                                 ObjectRegister::kR8,
                                                 ObjectRegister::kR9,
                                                 ObjectRegister::kR10,
                                                 ObjectRegister::kR11,
                                                 ObjectRegister::kR12,
                                                 ObjectRegister::kR13,
                                                 ObjectRegister::kR14,
                                                 ObjectRegister::kR15};
    EXPECT_NE(encoded, 4u) << std::hex << site.store;  // rsp
    EXPECT_EQ(site.object, by_number[encoded])
        << std::hex << site.store << ": " << register_name(site.object);
  }
}

// A libpython3.11.so built with -fPIC, as pyenv builds it (--enable-shared; installed on this
// kind of machine for root): _Py_NewReference loads _Py_tracemalloc_config's address from its
// GOT slot and keeps its argument in rbx across the call to tracemalloc.
TEST(CreationSites, PyenvSharedLibpython311) {
  const char* root = std::getenv("PYENV_ROOT");
  std::filesystem::path versions =
      std::filesystem::path(root && *root ? root : "/root/.pyenv") / "versions";
  std::string path;
  std::error_code error;
  for (const auto& version : std::filesystem::directory_iterator(versions, error)) {
    auto library = version.path() / "lib" / "libpython3.11.so.1.0";
    if (version.path().filename().string().rfind("3.11.", 0) == 0 &&
        std::filesystem::exists(library)) {
      path = library.string();
    }
  }
  if (path.empty()) GTEST_SKIP() << "no pyenv CPython 3.11 with a shared libpython here";
  auto file = inspect::ElfFile::open(path);
  EXPECT_FALSE(file.got_slots_of("_Py_tracemalloc_config").empty());
  auto scan = scan_interpreter(file);
  ASSERT_EQ(scan.refusal, "") << path;
  auto new_reference = file.find_function("_Py_NewReference");
  ASSERT_TRUE(new_reference);
  bool out_of_line = false;
  for (const auto& site : scan.sites) {
    auto branch = file.read_code(site.branch, 2);
    ASSERT_EQ(branch.size(), 2u);
    bool short_jcc = branch[0] == 0x74 || branch[0] == 0x75;
    bool near_jcc = branch[0] == 0x0f && (branch[1] == 0x84 || branch[1] == 0x85);
    EXPECT_TRUE(short_jcc || near_jcc) << std::hex << site.branch;
    if (site.branch >= new_reference->address &&
        site.branch < new_reference->address + new_reference->size) {
      out_of_line = true;
      EXPECT_EQ(site.object, ObjectRegister::kRbx) << register_name(site.object);
    }
  }
  EXPECT_TRUE(out_of_line);
  RecordProperty("sites", static_cast<int>(scan.sites.size()));
}

}  // namespace
}  // namespace memtrail::python
