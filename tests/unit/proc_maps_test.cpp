// SPDX-License-Identifier: Apache-2.0
// Parsing /proc/PID/maps text.
#include "inspect/proc_maps.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "inspect/process.h"

namespace memtrail::inspect {
namespace {

TEST(ProcMaps, ParsesFileBackedAnonymousAndSpecialMappings) {
  auto mappings = parse_proc_maps(
      "5581a0000000-5581a0001000 r--p 00000000 fe:01 1311 /usr/bin/my server\n"
      "5581a0001000-5581a0002000 r-xp 00001000 fe:01 1311 /usr/bin/my server\n"
      "5581a1000000-5581a1021000 rw-p 00000000 00:00 0 [heap]\n"
      "7f0000000000-7f0000100000 rw-p 00000000 00:00 0 \n"
      "7f1000000000-7f1000002000 r-xp 00002000 fe:01 77 /tmp/lib.so (deleted)\n"
      "7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]\n");
  ASSERT_EQ(mappings.size(), 6u);
  EXPECT_EQ(mappings[1].start, 0x5581a0001000u);
  EXPECT_EQ(mappings[1].end, 0x5581a0002000u);
  EXPECT_EQ(mappings[1].file_offset, 0x1000u);
  EXPECT_TRUE(mappings[1].executable);
  EXPECT_TRUE(mappings[1].readable);
  EXPECT_EQ(mappings[1].inode, 1311u);
  EXPECT_EQ(mappings[1].device, makedev(0xfe, 0x01));
  EXPECT_EQ(mappings[1].path, "/usr/bin/my server");
  EXPECT_TRUE(mappings[1].is_file());
  EXPECT_FALSE(mappings[0].executable);
  EXPECT_EQ(mappings[2].path, "[heap]");
  EXPECT_FALSE(mappings[2].is_file());
  EXPECT_EQ(mappings[3].path, "");
  EXPECT_FALSE(mappings[3].is_file());
  // A deleted file is still mapped, and memtrail reads it through the mapping: a file, named
  // without the kernel's suffix.
  EXPECT_EQ(mappings[4].path, "/tmp/lib.so");
  EXPECT_TRUE(mappings[4].deleted);
  EXPECT_TRUE(mappings[4].is_file());
  EXPECT_FALSE(mappings[1].deleted);
  EXPECT_FALSE(mappings[5].is_file());
  EXPECT_TRUE(mappings[1].contains(0x5581a0001fffu));
  EXPECT_FALSE(mappings[1].contains(0x5581a0002000u));
}

TEST(ProcMaps, SkipsMalformedLines) {
  auto mappings = parse_proc_maps(
      "garbage\n"
      "5581a0000000 r--p 00000000 fe:01 1311 /x\n"
      "zz-yy r--p 00000000 fe:01 1311 /x\n"
      "1000-2000 r-xp 00000000 fe:01 5 /ok\n"
      "1000-2000 r\n");
  ASSERT_EQ(mappings.size(), 1u);
  EXPECT_EQ(mappings[0].path, "/ok");
}

TEST(ProcMaps, ReadsALiveProcessAndReportsAMissingOne) {
  auto own = read_proc_maps(static_cast<uint32_t>(getpid()));
  ASSERT_TRUE(own.has_value());
  bool found_self = false;
  for (const auto& mapping : *own) {
    if (mapping.executable && mapping.path.find("proc_maps_test") != std::string::npos) {
      found_self = true;
    }
  }
  EXPECT_TRUE(found_self);
  EXPECT_FALSE(read_proc_maps(999999999).has_value());
}

}  // namespace
}  // namespace memtrail::inspect

namespace memtrail::inspect {
namespace {

TEST(Cgroups, TheUnifiedPathComesFirstAndAncestorsMatchOnWholeComponents) {
  auto paths = cgroup_paths(
      "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n1:name=systemd:/system.slice/x\n"
      "0::/system.slice/x.service\n");
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_EQ(paths[0], "/system.slice/x.service");
  EXPECT_EQ(paths[1], "/docker/abc");
  EXPECT_EQ(paths[2], "/system.slice/x");
  EXPECT_TRUE(cgroup_within("/docker/abc", "/docker"));
  EXPECT_TRUE(cgroup_within("/docker/abc", "/docker/abc/"));
  EXPECT_TRUE(cgroup_within("/docker", "/"));
  EXPECT_FALSE(cgroup_within("/dockerd/abc", "/docker"));
  EXPECT_FALSE(cgroup_within("/docker", "/docker/abc"));
  EXPECT_TRUE(cgroup_paths("").empty());
}

}  // namespace
}  // namespace memtrail::inspect
