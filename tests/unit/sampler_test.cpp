// SPDX-License-Identifier: Apache-2.0
// Tier-0 sampler: parsing procfs/cgroupfs texts captured on a real host, fake trees, live reads.
#include <errno.h>  // program_invocation_short_name
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "sampler/cgroups.h"
#include "sampler/host.h"
#include "sampler/pressure.h"
#include "sampler/processes.h"

namespace memtrail::sampler {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Texts captured on the development VM (Linux 6.18, cgroup v1 memory controller in a hybrid
// mount) while a process named "rd) (x" re-read a 128 MiB mmap'd file in a v1 memory cgroup
// limited to 48 MiB: a file-cache thrash. Unedited, except that the mount table lost one
// unrelated line and lines over 100 columns are split into adjacent string literals.

// /proc/vmstat during the thrash (swap counters are from an earlier swap experiment).
constexpr const char* kVmstat = R"txt(nr_free_pages 1191557
nr_free_pages_blocks 1063936
nr_zone_inactive_anon 41421
nr_zone_active_anon 388
nr_zone_inactive_file 82854
nr_zone_active_file 70867
nr_zone_unevictable 2886
nr_zone_write_pending 8665
nr_mlock 2644
nr_zspages 0
nr_free_cma 0
numa_hit 97379825
numa_miss 0
numa_foreign 0
numa_interleave 1112
numa_local 97379825
numa_other 0
nr_inactive_anon 41421
nr_active_anon 388
nr_inactive_file 82854
nr_active_file 70867
nr_unevictable 2886
nr_slab_reclaimable 25900
nr_slab_unreclaimable 6401
nr_isolated_anon 0
nr_isolated_file 0
workingset_nodes 16871
workingset_refault_anon 263546
workingset_refault_file 14086040
workingset_activate_anon 9732
workingset_activate_file 2259965
workingset_restore_anon 1
workingset_restore_file 1061027
workingset_nodereclaim 1929
nr_anon_pages 42468
nr_mapped 23513
nr_file_pages 156017
nr_dirty 8665
nr_writeback 0
nr_shmem 2238
nr_shmem_hugepages 0
nr_shmem_pmdmapped 0
nr_file_hugepages 1
nr_file_pmdmapped 0
nr_anon_transparent_hugepages 0
nr_vmscan_write 801604
nr_vmscan_immediate_reclaim 18222
nr_dirtied 3874837
nr_written 4012415
nr_throttled_written 0
nr_kernel_misc_reclaimable 0
nr_foll_pin_acquired 0
nr_foll_pin_released 0
nr_kernel_stack 1600
nr_page_table_pages 682
nr_sec_page_table_pages 0
nr_iommu_pages 0
nr_swapcached 0
pgpromote_success 0
pgpromote_candidate 0
pgpromote_candidate_nrl 0
pgdemote_kswapd 0
pgdemote_direct 0
pgdemote_khugepaged 0
pgdemote_proactive 0
nr_hugetlb 0
nr_balloon_pages 0
nr_kernel_file_pages 0
nr_dirty_threshold 1203624
nr_dirty_background_threshold 601077
nr_memmap_pages 0
nr_memmap_boot_pages 98304
pgpgin 59982885
pgpgout 16069672
pswpin 263546
pswpout 801599
pgalloc_dma 0
pgalloc_dma32 0
pgalloc_normal 109003507
pgalloc_movable 0
pgalloc_device 0
allocstall_dma 0
allocstall_dma32 0
allocstall_normal 0
allocstall_movable 0
allocstall_device 0
pgskip_dma 0
pgskip_dma32 0
pgskip_normal 0
pgskip_movable 0
pgskip_device 0
pgfree 110227615
pgactivate 1474689
pgdeactivate 1193125
pglazyfree 0
pgfault 80019376
pgmajfault 61032
pglazyfreed 0
pgrefill 0
pgreuse 1871993
pgsteal_kswapd 0
pgsteal_direct 0
pgsteal_khugepaged 0
pgsteal_proactive 0
pgscan_kswapd 0
pgscan_direct 0
pgscan_khugepaged 0
pgscan_proactive 0
pgscan_direct_throttle 0
pgscan_anon 2500031
pgscan_file 21720286
pgsteal_anon 803117
pgsteal_file 11545551
zone_reclaim_success 0
zone_reclaim_failed 0
pginodesteal 0
slabs_scanned 2395
kswapd_inodesteal 0
kswapd_low_wmark_hit_quickly 0
kswapd_high_wmark_hit_quickly 0
pageoutrun 0
pgrotated 813195
drop_pagecache 1
drop_slab 2
oom_kill 0
numa_pte_updates 0
numa_huge_pte_updates 0
numa_hint_faults 0
numa_hint_faults_local 0
numa_pages_migrated 0
pgmigrate_success 0
pgmigrate_fail 0
thp_migration_success 0
thp_migration_fail 0
thp_migration_split 0
compact_migrate_scanned 0
compact_free_scanned 0
compact_isolated 0
compact_stall 0
compact_fail 0
compact_success 0
compact_daemon_wake 0
compact_daemon_migrate_scanned 0
compact_daemon_free_scanned 0
htlb_buddy_alloc_success 0
htlb_buddy_alloc_fail 0
unevictable_pgs_culled 28286
unevictable_pgs_scanned 0
unevictable_pgs_rescued 25400
unevictable_pgs_mlocked 28423
unevictable_pgs_munlocked 25779
unevictable_pgs_cleared 0
unevictable_pgs_stranded 0
thp_fault_alloc 0
thp_fault_fallback 0
thp_fault_fallback_charge 0
thp_collapse_alloc 0
thp_collapse_alloc_failed 0
thp_file_alloc 0
thp_file_fallback 0
thp_file_fallback_charge 0
thp_file_mapped 455
thp_split_page 0
thp_split_page_failed 0
thp_deferred_split_page 0
thp_underused_split_page 0
thp_split_pmd 451
thp_scan_exceed_none_pte 0
thp_scan_exceed_swap_pte 0
thp_scan_exceed_share_pte 0
thp_split_pud 0
thp_zero_page_alloc 0
thp_zero_page_alloc_failed 0
thp_swpout 0
thp_swpout_fallback 0
balloon_inflate 0
balloon_deflate 0
balloon_migrate 0
swap_ra 221702
swap_ra_hit 210369
swpin_zero 0
swpout_zero 0
ksm_swpin_copy 0
cow_ksm 0
zswpin 0
zswpout 0
zswpwb 0
direct_map_level2_splits 5
direct_map_level3_splits 0
direct_map_level2_collapses 0
direct_map_level3_collapses 0
nr_unstable 0
)txt";

constexpr const char* kMeminfo = R"txt(MemTotal:       24683620 kB
MemFree:        23590180 kB
MemAvailable:   24045152 kB
Buffers:            2812 kB
Cached:           621356 kB
SwapCached:            0 kB
Active:           285020 kB
Inactive:         497200 kB
Active(anon):       1552 kB
Inactive(anon):   165684 kB
Active(file):     283468 kB
Inactive(file):   331516 kB
Unevictable:       11544 kB
Mlocked:           10576 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Zswap:                 0 kB
Zswapped:              0 kB
Dirty:             34660 kB
Writeback:             0 kB
AnonPages:        169872 kB
Mapped:            94184 kB
Shmem:              8952 kB
KReclaimable:     103600 kB
Slab:             129204 kB
SReclaimable:     103600 kB
SUnreclaim:        25604 kB
KernelStack:        1600 kB
PageTables:         2728 kB
SecPageTables:         0 kB
NFS_Unstable:          0 kB
Bounce:                0 kB
WritebackTmp:          0 kB
CommitLimit:    12341808 kB
Committed_AS:     235212 kB
VmallocTotal:   34359738367 kB
VmallocUsed:       21892 kB
VmallocChunk:          0 kB
Percpu:             1400 kB
AnonHugePages:         0 kB
ShmemHugePages:        0 kB
ShmemPmdMapped:        0 kB
FileHugePages:      2048 kB
FilePmdMapped:         0 kB
Balloon:               0 kB
HugePages_Total:       0
HugePages_Free:        0
HugePages_Rsvd:        0
HugePages_Surp:        0
Hugepagesize:       2048 kB
Hugetlb:               0 kB
DirectMap4k:       30720 kB
DirectMap2M:    25135104 kB
)txt";

// /proc/pressure/memory during the thrash.
constexpr const char* kHostPressure = R"txt(some avg10=15.33 avg60=6.85 avg300=4.62 total=22003099
full avg10=14.93 avg60=5.97 avg300=3.61 total=17182161
)txt";

// /sys/fs/cgroup/unified/memtrail-sampler-capture/memory.pressure: the v2 twin of the v1 cgroup.
constexpr const char* kCgroupPressure = R"txt(some avg10=28.41 avg60=8.05 avg300=1.83 total=5861921
full avg10=28.41 avg60=8.05 avg300=1.83 total=5861921
)txt";

// /sys/fs/cgroup/memory/memtrail-sampler-capture/memory.stat (limit 48 MiB, no children).
constexpr const char* kV1MemoryStat = R"txt(cache 46841856
rss 2879488
rss_huge 0
shmem 0
mapped_file 43864064
dirty 0
writeback 0
workingset_refault_anon 0
workingset_refault_file 2591376
swap 0
swapcached 0
pgpgin 1004252
pgpgout 996422
pgfault 100518
pgmajfault 420
inactive_anon 2875392
active_anon 4096
inactive_file 30875648
active_file 15966208
unevictable 0
hierarchical_memory_limit 50331648
hierarchical_memsw_limit 9223372036854771712
total_cache 46841856
total_rss 2879488
total_rss_huge 0
total_shmem 0
total_mapped_file 43864064
total_dirty 0
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 2591376
total_swap 0
total_swapcached 0
total_pgpgin 1004252
total_pgpgout 996422
total_pgfault 100518
total_pgmajfault 420
total_inactive_anon 2875392
total_active_anon 4096
total_inactive_file 30875648
total_active_file 15966208
total_unevictable 0
)txt";

// /sys/fs/cgroup/memory/memory.stat: the v1 root, where total_* (whole host) differ from the
// root's own counters.
constexpr const char* kV1RootMemoryStat = R"txt(cache 9433088
rss 4186112
rss_huge 0
shmem 9166848
mapped_file 7684096
dirty 12288
writeback 0
workingset_refault_anon 0
workingset_refault_file 1672
swap 0
swapcached 0
pgpgin 44127
pgpgout 40802
pgfault 63253
pgmajfault 0
inactive_anon 0
active_anon 1531904
inactive_file 20480
active_file 245760
unevictable 11821056
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 639205376
total_rss 174133248
total_rss_huge 0
total_shmem 9166848
total_mapped_file 94326784
total_dirty 35553280
total_writeback 0
total_workingset_refault_anon 263546
total_workingset_refault_file 14086907
total_swap 0
total_swapcached 0
total_pgpgin 80378290
total_pgpgout 80210489
total_pgfault 80019766
total_pgmajfault 61032
total_inactive_anon 169803776
total_active_anon 1589248
total_inactive_file 339587072
total_active_file 290443264
total_unevictable 11821056
)txt";

constexpr const char* kV1OomControl = R"txt(oom_kill_disable 0
under_oom 0
oom_kill 0
)txt";

// /proc/self/mountinfo: hybrid, memory on v1, cgroup2 at /sys/fs/cgroup/unified.
constexpr const char* kHybridMountinfo = R"txt(21 26 0:20 / /proc rw,relatime - proc proc rw
22 26 0:21 / /sys rw,relatime - sysfs sysfs rw
23 26 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334416k,nr_inodes=3083604,mode=755
24 23 0:22 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683620k
25 23 0:23 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
28 25 0:25 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
29 24 0:26 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683620k
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:32 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
37 30 0:34 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 22 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw
)txt";

// /proc/PID/cgroup of the thrashing process.
constexpr const char* kV1ProcCgroup = R"txt(9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/memtrail-sampler-capture
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/memtrail-sampler-capture
)txt";

// /proc/PID/stat and /proc/PID/status of the thrashing process, whose comm is "rd) (x".
constexpr const char* kProcStat =
    "674 (rd) (x) R 670 670 29141 0 -1 4458496 98884 0 416 0 512 855 0 0 20 0 1 0 988651 "
    "148541440 13033 18446744073709551615 4321280 7148169 140727918174528 0 0 0 0 16781318 0 "
    "0 0 0 17 0 0 0 0 0 0 9723336 11027064 704421888 140727918180754 140727918180795 "
    "140727918180795 140727918182364 0\n";

constexpr const char* kProcStatus =
    R"txt(Name:	rd) (x
Umask:	0022
State:	R (running)
Tgid:	674
Ngid:	0
Pid:	674
PPid:	670
TracerPid:	0
Uid:	0	0	0	0
Gid:	0	0	0	0
FDSize:	256
Groups:	 
NStgid:	674
NSpid:	674
NSpgid:	670
NSsid:	29141
Kthread:	0
VmPeak:	  145060 kB
VmSize:	  145060 kB
VmLck:	       0 kB
VmPin:	       0 kB
VmHWM:	   62016 kB
VmRSS:	   50128 kB
RssAnon:	    2812 kB
RssFile:	   47316 kB
RssShmem:	       0 kB
VmData:	    4764 kB
VmStk:	     132 kB
VmExe:	    2764 kB
VmLib:	    2192 kB
VmPTE:	     320 kB
VmSwap:	       0 kB
HugetlbPages:	       0 kB
CoreDumping:	0
THP_enabled:	1
untag_mask:	0xffffffffffffffff
Threads:	1
SigQ:	1/96364
SigPnd:	0000000000000000
ShdPnd:	0000000000000000
SigBlk:	0000000000000000
SigIgn:	0000000001001006
SigCgt:	0000000000000000
CapInh:	0000000000000000
CapPrm:	000001fffeffffff
CapEff:	000001fffeffffff
CapBnd:	000001fffeffffff
CapAmb:	0000000000000000
NoNewPrivs:	0
Seccomp:	0
Seccomp_filters:	0
Speculation_Store_Bypass:	vulnerable
SpeculationIndirectBranch:	always enabled
Cpus_allowed:	3
Cpus_allowed_list:	0-1
Mems_allowed:	)txt"
    "00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,"
    "00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,"
    "00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000000,"
    "00000000,00000000,00000000,00000000,00000000,00000000,00000000,00000001\n"
    R"txt(Mems_allowed_list:	0
voluntary_ctxt_switches:	499
nonvoluntary_ctxt_switches:	8848
)txt";

// ---------------------------------------------------------------------------------------------
// Pure cgroup v2 texts. This machine cannot show them (its memory controller is bound to v1),
// so they follow the 6.12+ kernel's formats (memcg_stat_format() in mm/memcontrol.c, and a
// systemd host's mount table) with distinctive numbers.

constexpr const char* kPureV2Mountinfo =
    "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw\n"
    "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "31 24 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw\n";

constexpr const char* kV2MemoryStat = R"txt(anon 523763712
file 14680064
kernel 9437184
kernel_stack 294912
pagetables 1306624
sec_pagetables 0
percpu 3840
sock 4096
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 9342976
file_dirty 0
file_writeback 0
swapcached 2691072
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 391151616
active_anon 132608000
inactive_file 7651328
active_file 7028736
unevictable 0
slab_reclaimable 1029784
slab_unreclaimable 2451208
slab 3480992
workingset_refault_anon 211407
workingset_refault_file 5512
workingset_activate_anon 4022
workingset_activate_file 311
workingset_restore_anon 3811
workingset_restore_file 97
workingset_nodereclaim 0
pgdemote_kswapd 0
pgdemote_direct 0
pgdemote_khugepaged 0
pgdemote_proactive 0
pgpromote_success 0
pgscan 1630211
pgsteal 561877
pswpin 239118
pswpout 60214
pgscan_kswapd 0
pgscan_direct 0
pgscan_khugepaged 0
pgscan_proactive 0
pgsteal_kswapd 0
pgsteal_direct 0
pgsteal_khugepaged 0
pgsteal_proactive 0
pgfault 1865310
pgmajfault 35144
pgrefill 912004
pgactivate 8031
pgdeactivate 900112
pglazyfree 0
pglazyfreed 0
swpin_zero 0
swpout_zero 12
zswpin 77
zswpout 91
zswpwb 0
thp_fault_alloc 0
thp_collapse_alloc 0
thp_swpout 0
thp_swpout_fallback 0
numa_pages_migrated 0
numa_pte_updates 0
numa_hint_faults 0
)txt";

constexpr const char* kV2MemoryEvents =
    "low 0\nhigh 0\nmax 7217\noom 1\noom_kill 1\noom_group_kill 0\n";

// ---------------------------------------------------------------------------------------------
// Helpers for fake cgroupfs/procfs trees.

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "sampler_test.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

uint64_t inode_of(const std::string& path) {
  struct stat info {};
  EXPECT_EQ(::stat(path.c_str(), &info), 0) << path;
  return info.st_ino;
}

// ---------------------------------------------------------------------------------------------
// PSI

TEST(SamplerPressure, ParsesSomeAndFullFromAHostUnderPressure) {
  model::PressureStall stall = parse_pressure(kHostPressure);
  EXPECT_TRUE(stall.available);
  EXPECT_DOUBLE_EQ(stall.some_avg10, 15.33);
  EXPECT_DOUBLE_EQ(stall.full_avg10, 14.93);
  EXPECT_EQ(stall.some_total_us, 22003099u);
  EXPECT_EQ(stall.full_total_us, 17182161u);
}

TEST(SamplerPressure, ParsesACgroupFileAndToleratesAMissingFullLine) {
  model::PressureStall stall = parse_pressure(kCgroupPressure);
  EXPECT_TRUE(stall.available);
  EXPECT_DOUBLE_EQ(stall.some_avg10, 28.41);
  EXPECT_EQ(stall.full_total_us, 5861921u);

  // cpu.pressure at the root before 5.13 had no "full" line.
  stall = parse_pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=4242\n");
  EXPECT_TRUE(stall.available);
  EXPECT_DOUBLE_EQ(stall.some_avg10, 1.5);
  EXPECT_EQ(stall.some_total_us, 4242u);
  EXPECT_EQ(stall.full_total_us, 0u);
}

TEST(SamplerPressure, GarbageAndMissingFilesAreUnavailable) {
  EXPECT_FALSE(parse_pressure("").available);
  EXPECT_FALSE(parse_pressure("some avg10=x avg60=0.00 avg300=0.00 total=1\n").available);
  EXPECT_FALSE(read_pressure("/nonexistent/memory.pressure").available);
}

TEST(SamplerPressure, ReadsThisHostsPsiFile) {
  if (::access("/proc/pressure/memory", R_OK) != 0) GTEST_SKIP() << "no PSI on this kernel";
  model::PressureStall stall = read_pressure("/proc/pressure/memory");
  EXPECT_TRUE(stall.available);
  EXPECT_GE(stall.some_total_us, stall.full_total_us);  // full stalls are a subset of some
}

bool has_cap_sys_resource() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      return (std::stoull(line.substr(7), nullptr, 16) >> 24) & 1;  // CAP_SYS_RESOURCE = 24
    }
  }
  return false;
}

TEST(SamplerPressureTrigger, ArmsATwoSecondWindowAndMovesOwnership) {
  if (::access("/proc/pressure/memory", W_OK) != 0) GTEST_SKIP() << "PSI file not writable";
  PressureTrigger trigger("/proc/pressure/memory", StallKind::kSome, 100000, 2000000);
  int fd = trigger.fd();
  ASSERT_GE(fd, 0);
  PressureTrigger moved(std::move(trigger));
  EXPECT_EQ(moved.fd(), fd);
  EXPECT_EQ(trigger.fd(), -1);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  // The trigger is armed on this descriptor: a second one on the same fd is refused.
  ssize_t second = ::write(moved.fd(), "some 100000 2000000", 20);
  int error = errno;
  EXPECT_LT(second, 0);
  EXPECT_EQ(error, EBUSY);
}

TEST(SamplerPressureTrigger, OneSecondWindowNeedsCapSysResource) {
  if (::access("/proc/pressure/memory", W_OK) != 0) GTEST_SKIP() << "PSI file not writable";
  if (has_cap_sys_resource()) GTEST_SKIP() << "CAP_SYS_RESOURCE allows any window";
  try {
    PressureTrigger trigger("/proc/pressure/memory", StallKind::kFull, 100000, 1000000);
    FAIL() << "a 1 s window was accepted without CAP_SYS_RESOURCE";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("Invalid argument"), std::string::npos)
        << error.what();
    EXPECT_NE(std::string(error.what()).find("full 100000 1000000"), std::string::npos);
    EXPECT_NE(error.hint().find("multiples of 2 s"), std::string::npos) << error.hint();
  }
}

TEST(SamplerPressureTrigger, MissingFileThrowsWithThePath) {
  try {
    PressureTrigger trigger("/nonexistent/memory.pressure", StallKind::kSome, 1, 2000000);
    FAIL() << "no error for a missing file";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/memory.pressure"), std::string::npos);
    EXPECT_NE(std::string(error.what()).find("No such file"), std::string::npos);
    EXPECT_FALSE(error.hint().empty());
  }
}

// ---------------------------------------------------------------------------------------------
// Host

TEST(SamplerHost, ParsesVmstatCounters) {
  model::HostSample sample;
  parse_vmstat(kVmstat, sample);
  EXPECT_EQ(sample.pgfault, 80019376u);
  EXPECT_EQ(sample.pgmajfault, 61032u);
  EXPECT_EQ(sample.pswpin, 263546u);
  EXPECT_EQ(sample.pswpout, 801599u);
  EXPECT_EQ(sample.zswpin, 0u);
  EXPECT_EQ(sample.workingset_refault_anon, 263546u);
  EXPECT_EQ(sample.workingset_refault_file, 14086040u);
  EXPECT_EQ(sample.workingset_activate_anon, 9732u);
  EXPECT_EQ(sample.workingset_activate_file, 2259965u);
  EXPECT_EQ(sample.workingset_restore_anon, 1u);
  EXPECT_EQ(sample.workingset_restore_file, 1061027u);
  EXPECT_EQ(sample.pgscan_kswapd, 0u);
  EXPECT_EQ(sample.allocstall, 0u);
  EXPECT_EQ(sample.oom_kill, 0u);
}

TEST(SamplerHost, SumsAllocstallOverZonesAndKeepsUnlistedKeysOut) {
  model::HostSample sample;
  sample.zswpin = 99;  // no zswpin line (CONFIG_ZSWAP=n): left alone
  parse_vmstat(
      "pgscan_kswapd 120\npgscan_direct 30\npgsteal_kswapd 100\npgsteal_direct 25\n"
      "allocstall_dma 0\nallocstall_dma32 2\nallocstall_normal 5\nallocstall_movable 1\n"
      "pgscan_direct_throttle 77\noom_kill 3\n",
      sample);
  EXPECT_EQ(sample.allocstall, 8u);
  EXPECT_EQ(sample.pgscan_kswapd, 120u);
  EXPECT_EQ(sample.pgscan_direct, 30u);  // not pgscan_direct_throttle
  EXPECT_EQ(sample.pgsteal_kswapd, 100u);
  EXPECT_EQ(sample.pgsteal_direct, 25u);
  EXPECT_EQ(sample.oom_kill, 3u);
  EXPECT_EQ(sample.zswpin, 99u);
}

TEST(SamplerHost, ParsesMeminfoInBytes) {
  model::HostSample sample;
  parse_meminfo(kMeminfo, sample);
  EXPECT_EQ(sample.mem_total_bytes, 24683620ull * 1024);
  EXPECT_EQ(sample.mem_available_bytes, 24045152ull * 1024);
  EXPECT_EQ(sample.swap_total_bytes, 0u);

  parse_meminfo(
      "SwapCached:         12 kB\nSwapTotal:     2097148 kB\nSwapFree:      1441788 kB\n"
      "Zswap:           40960 kB\nZswapped:       163840 kB\n",
      sample);
  EXPECT_EQ(sample.swap_total_bytes, 2097148ull * 1024);
  EXPECT_EQ(sample.swap_free_bytes, 1441788ull * 1024);
  EXPECT_EQ(sample.zswap_pool_bytes, 40960ull * 1024);  // "Zswap:" is not "Zswapped:"
  EXPECT_EQ(sample.zswapped_bytes, 163840ull * 1024);
}

TEST(SamplerHost, ReadsAFakeProcAndSysTree) {
  TempDir root;
  write_file(root.path() + "/proc/vmstat", kVmstat);
  write_file(root.path() + "/proc/meminfo", kMeminfo);
  write_file(root.path() + "/proc/pressure/memory", kHostPressure);
  write_file(root.path() + "/sys/module/zswap/parameters/enabled", "Y\n");
  model::HostSample sample = read_host_sample(root.path() + "/proc", root.path() + "/sys");
  EXPECT_TRUE(sample.zswap_enabled);
  EXPECT_EQ(sample.psi.some_total_us, 22003099u);
  EXPECT_EQ(sample.pgmajfault, 61032u);
  EXPECT_EQ(sample.mem_available_bytes, 24045152ull * 1024);

  write_file(root.path() + "/sys/module/zswap/parameters/enabled", "N\n");
  fs::remove(root.path() + "/proc/pressure/memory");
  sample = read_host_sample(root.path() + "/proc", root.path() + "/sys");
  EXPECT_FALSE(sample.zswap_enabled);
  EXPECT_FALSE(sample.psi.available);

  fs::remove(root.path() + "/proc/vmstat");
  EXPECT_THROW(read_host_sample(root.path() + "/proc", root.path() + "/sys"), Error);
}

TEST(SamplerHost, ReadsThisHost) {
  model::HostSample sample = read_host_sample();
  // MemTotal is sysinfo's totalram, which is what _SC_PHYS_PAGES reports too.
  EXPECT_GT(sample.mem_total_bytes, 0u);
  EXPECT_EQ(sample.mem_total_bytes, static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                                        static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)));
  EXPECT_LE(sample.mem_available_bytes, sample.mem_total_bytes);
  EXPECT_GT(sample.pgfault, 0u);
  EXPECT_LE(sample.swap_free_bytes, sample.swap_total_bytes);
}

// ---------------------------------------------------------------------------------------------
// Cgroup layout and /proc/PID/cgroup

TEST(SamplerCgroupLayout, HybridMountinfoPutsMemoryOnV1AndPsiOnTheUnifiedTree) {
  CgroupLayout layout = parse_cgroup_layout(kHybridMountinfo);
  EXPECT_EQ(layout.version, 1);
  EXPECT_EQ(layout.memory_root, "/sys/fs/cgroup/memory");
  EXPECT_EQ(layout.unified_root, "/sys/fs/cgroup/unified");
}

TEST(SamplerCgroupLayout, PureV2MountinfoUsesTheCgroup2MountForBoth) {
  CgroupLayout layout = parse_cgroup_layout(kPureV2Mountinfo);
  EXPECT_EQ(layout.version, 2);
  EXPECT_EQ(layout.memory_root, "/sys/fs/cgroup");
  EXPECT_EQ(layout.unified_root, "/sys/fs/cgroup");
}

TEST(SamplerCgroupLayout, AcceptsProcMountsEscapesAndPrefersWholeHierarchies) {
  CgroupLayout layout = parse_cgroup_layout(
      "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n"
      "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n");
  EXPECT_EQ(layout.version, 1);
  EXPECT_EQ(layout.memory_root, "/sys/fs/cgroup/memory");
  EXPECT_EQ(layout.unified_root, "");

  // A bind mount of a sub-tree comes first; the mount of the whole hierarchy wins.
  layout = parse_cgroup_layout(
      "40 30 0:37 /lxc/c1 /var/lib/c1/cgroup rw - cgroup2 cgroup2 rw\n"
      "41 30 0:37 / /mnt/cgroup\\040v2 rw - cgroup2 cgroup2 rw\n");
  EXPECT_EQ(layout.version, 2);
  EXPECT_EQ(layout.memory_root, "/mnt/cgroup v2");

  // "memory_recursiveprot" is an option of cgroup2, not the v1 memory controller.
  EXPECT_EQ(parse_cgroup_layout("34 30 0:31 / /x rw - cgroup cgroup rw,memory_x\n").version, 0);
  EXPECT_EQ(parse_cgroup_layout("").version, 0);
}

TEST(SamplerCgroupLayout, MemoryCgroupOfAProcess) {
  CgroupLayout v1{1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"};
  EXPECT_EQ(memory_cgroup_of(kV1ProcCgroup, v1), "/memtrail-sampler-capture");
  EXPECT_EQ(memory_cgroup_of("5:cpu,memory:/a:b/c\n0::/other\n", v1), "/a:b/c");
  EXPECT_EQ(memory_cgroup_of("5:cpu:/a\n", v1), "");

  CgroupLayout v2{2, "/sys/fs/cgroup", "/sys/fs/cgroup"};
  EXPECT_EQ(memory_cgroup_of("0::/system.slice/db.service\n", v2), "/system.slice/db.service");
  EXPECT_EQ(memory_cgroup_of(kV1ProcCgroup, v2), "/memtrail-sampler-capture");
  EXPECT_EQ(memory_cgroup_of("4:memory:/x\n", v2), "");
}

TEST(SamplerCgroupLayout, DetectsThisHost) {
  CgroupLayout layout = detect_cgroup_layout();
  ASSERT_TRUE(layout.version == 1 || layout.version == 2) << layout.version;
  const char* probe = layout.version == 1 ? "/memory.usage_in_bytes" : "/cgroup.controllers";
  EXPECT_EQ(::access((layout.memory_root + probe).c_str(), R_OK), 0) << layout.memory_root;
  if (layout.version == 2) {
    EXPECT_EQ(layout.unified_root, layout.memory_root);
  }
}

// ---------------------------------------------------------------------------------------------
// memory.stat

TEST(SamplerMemoryStat, V1UsesHierarchicalTotalsAndSwap) {
  model::CgroupSample sample;
  parse_memory_stat(kV1MemoryStat, 1, sample);
  EXPECT_EQ(sample.pgfault, 100518u);
  EXPECT_EQ(sample.pgmajfault, 420u);
  EXPECT_EQ(sample.workingset_refault_file, 2591376u);
  EXPECT_EQ(sample.workingset_refault_anon, 0u);
  EXPECT_EQ(sample.swap_bytes, 0u);
  EXPECT_FALSE(sample.pswpin.has_value());  // v1 has none: BPF provides them in deep mode
  EXPECT_FALSE(sample.pgscan.has_value());

  // At the v1 root the totals (the whole host) differ from the root's own pages.
  model::CgroupSample root;
  parse_memory_stat(kV1RootMemoryStat, 1, root);
  EXPECT_EQ(root.pgfault, 80019766u);  // total_pgfault, not pgfault 63253
  EXPECT_EQ(root.pgmajfault, 61032u);
  EXPECT_EQ(root.workingset_refault_anon, 263546u);
  EXPECT_EQ(root.workingset_refault_file, 14086907u);
}

TEST(SamplerMemoryStat, V1TotalsWinInAnyOrderAndOldKeysMapToFile) {
  model::CgroupSample sample;
  parse_memory_stat(
      "total_swap 8192\ntotal_pgmajfault 9\nswap 4096\npgmajfault 2\n"
      "workingset_refault 31\n",
      1, sample);
  EXPECT_EQ(sample.swap_bytes, 8192u);
  EXPECT_EQ(sample.pgmajfault, 9u);
  EXPECT_EQ(sample.workingset_refault_file, 31u);  // before 5.9: file pages only
}

TEST(SamplerMemoryStat, V2HasSwapInsZswapAndScan) {
  model::CgroupSample sample;
  parse_memory_stat(kV2MemoryStat, 2, sample);
  EXPECT_EQ(sample.pgfault, 1865310u);
  EXPECT_EQ(sample.pgmajfault, 35144u);
  EXPECT_EQ(sample.workingset_refault_anon, 211407u);
  EXPECT_EQ(sample.workingset_refault_file, 5512u);
  EXPECT_EQ(sample.workingset_restore_anon, 3811u);
  EXPECT_EQ(sample.workingset_restore_file, 97u);
  EXPECT_EQ(sample.pswpin, 239118u);
  EXPECT_EQ(sample.pswpout, 60214u);
  EXPECT_EQ(sample.zswpin, 77u);
  EXPECT_EQ(sample.pgscan, 1630211u);  // "pgscan", not pgscan_kswapd/direct
  EXPECT_EQ(sample.swap_bytes, 0u);    // v2 swap is memory.swap.current, not memory.stat
}

// ---------------------------------------------------------------------------------------------
// Cgroup samples from fake trees

struct FakeV1 {
  TempDir dir;
  CgroupLayout layout{1, dir.path() + "/memory", dir.path() + "/unified"};

  FakeV1() {
    const std::string& m = layout.memory_root;
    write_file(m + "/memory.stat", kV1RootMemoryStat);
    write_file(m + "/memory.limit_in_bytes", "9223372036854771712\n");
    write_file(m + "/memory.usage_in_bytes", "820592640\n");
    write_file(m + "/memory.failcnt", "0\n");
    write_file(m + "/memory.oom_control", kV1OomControl);
    write_file(layout.unified_root + "/memory.pressure", kHostPressure);
    write_file(m + "/db/memory.stat", kV1MemoryStat);
    write_file(m + "/db/memory.limit_in_bytes", "50331648\n");
    write_file(m + "/db/memory.usage_in_bytes", "50229248\n");
    write_file(m + "/db/memory.failcnt", "809562\n");
    write_file(m + "/db/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
    write_file(layout.unified_root + "/db/memory.pressure", kCgroupPressure);
    write_file(m + "/web/memory.stat", "total_pgfault 5\n");
    write_file(m + "/web/memory.usage_in_bytes", "4096\n");
    write_file(m + "/web/memory.limit_in_bytes", "9223372036854771712\n");
  }
};

TEST(SamplerCgroupSample, V1LimitedCgroupWithPsiFromTheUnifiedTree) {
  FakeV1 fake;
  std::optional<model::CgroupSample> db = read_cgroup_sample(fake.layout, "/db");
  ASSERT_TRUE(db.has_value());
  EXPECT_EQ(db->path, "/db");
  EXPECT_EQ(db->version, 1);
  EXPECT_EQ(db->id, inode_of(fake.layout.memory_root + "/db"));
  EXPECT_EQ(db->limit_bytes, 50331648u);
  EXPECT_EQ(db->usage_bytes, 50229248u);
  EXPECT_EQ(db->failcnt, 809562u);
  EXPECT_EQ(db->oom_kill, 2u);
  EXPECT_EQ(db->workingset_refault_file, 2591376u);
  EXPECT_TRUE(db->psi.available);
  EXPECT_DOUBLE_EQ(db->psi.some_avg10, 28.41);

  std::optional<model::CgroupSample> root = read_cgroup_sample(fake.layout, "/");
  ASSERT_TRUE(root.has_value());
  EXPECT_FALSE(root->limit_bytes.has_value());  // 9223372036854771712: unlimited
  EXPECT_EQ(root->usage_bytes, 820592640u);
  EXPECT_EQ(root->failcnt, 0u);
  EXPECT_EQ(root->pgfault, 80019766u);
  EXPECT_DOUBLE_EQ(root->psi.some_avg10, 15.33);

  // No twin in the unified tree: no PSI, but the rest is there.
  std::optional<model::CgroupSample> web = read_cgroup_sample(fake.layout, "web");
  ASSERT_TRUE(web.has_value());
  EXPECT_EQ(web->path, "/web");
  EXPECT_FALSE(web->psi.available);
  EXPECT_FALSE(web->limit_bytes.has_value());
  EXPECT_FALSE(web->failcnt.has_value());  // no memory.failcnt file
  EXPECT_EQ(web->pgfault, 5u);

  EXPECT_FALSE(read_cgroup_sample(fake.layout, "/gone").has_value());
  EXPECT_FALSE(read_cgroup_sample(fake.layout, "/../etc").has_value());
}

TEST(SamplerCgroupSample, V1ListAndResolve) {
  FakeV1 fake;
  EXPECT_EQ(list_memory_cgroups(fake.layout), (std::vector<std::string>{"/", "/db", "/web"}));
  const CgroupLayout& layout = fake.layout;
  EXPECT_EQ(resolve_cgroup_argument(layout, layout.memory_root + "/db"), "/db");
  EXPECT_EQ(resolve_cgroup_argument(layout, layout.unified_root + "/db"), "/db");
  EXPECT_EQ(resolve_cgroup_argument(layout, "/db"), "/db");
  EXPECT_EQ(resolve_cgroup_argument(layout, "db"), "/db");
  EXPECT_EQ(resolve_cgroup_argument(layout, "db//"), "/db");
  EXPECT_EQ(resolve_cgroup_argument(layout, layout.memory_root), "/");
  EXPECT_EQ(resolve_cgroup_argument(layout, "/nope"), std::nullopt);
  EXPECT_EQ(resolve_cgroup_argument(layout, "db/../web"), std::nullopt);
  // Same prefix, different directory: not below the memory root.
  EXPECT_EQ(resolve_cgroup_argument(layout, layout.memory_root + "x/db"), std::nullopt);
}

struct FakeV2 {
  TempDir dir;
  CgroupLayout layout{2, dir.path() + "/cgroup", dir.path() + "/cgroup"};

  FakeV2() {
    const std::string& r = layout.memory_root;
    // The root has memory.stat and memory.pressure but no memory.current, .max or .events.
    write_file(r + "/cgroup.controllers", "cpuset cpu io memory pids\n");
    write_file(r + "/memory.stat", kV2MemoryStat);
    write_file(r + "/memory.pressure", kHostPressure);
    write_file(r + "/db/memory.current", "268435456\n");
    write_file(r + "/db/memory.max", "268435456\n");
    write_file(r + "/db/memory.swap.current", "640942080\n");
    write_file(r + "/db/memory.stat", kV2MemoryStat);
    write_file(r + "/db/memory.events", kV2MemoryEvents);
    write_file(r + "/db/memory.pressure", kCgroupPressure);
    write_file(r + "/db/replica/memory.current", "4096\n");
    write_file(r + "/db/replica/memory.max", "max\n");
    write_file(r + "/db/replica/memory.stat", "pgfault 1\n");
    // The memory controller is not enabled here (no memory.current), nor below.
    write_file(r + "/init.scope/cgroup.procs", "1\n");
    write_file(r + "/init.scope/inner/cgroup.procs", "");
  }
};

TEST(SamplerCgroupSample, V2CgroupAtItsLimit) {
  FakeV2 fake;
  std::optional<model::CgroupSample> db = read_cgroup_sample(fake.layout, "/db");
  ASSERT_TRUE(db.has_value());
  EXPECT_EQ(db->version, 2);
  EXPECT_EQ(db->id, inode_of(fake.layout.memory_root + "/db"));
  EXPECT_EQ(db->limit_bytes, 268435456u);
  EXPECT_EQ(db->usage_bytes, 268435456u);
  EXPECT_EQ(db->swap_bytes, 640942080u);
  EXPECT_EQ(db->oom_kill, 1u);
  EXPECT_EQ(db->failcnt, 7217u);  // memory.events "max"
  EXPECT_EQ(db->pswpin, 239118u);
  EXPECT_EQ(db->pgscan, 1630211u);
  EXPECT_DOUBLE_EQ(db->psi.full_avg10, 28.41);

  std::optional<model::CgroupSample> replica = read_cgroup_sample(fake.layout, "/db/replica");
  ASSERT_TRUE(replica.has_value());
  EXPECT_FALSE(replica->limit_bytes.has_value());  // "max"
  EXPECT_EQ(replica->usage_bytes, 4096u);
  EXPECT_FALSE(replica->pswpin.has_value());  // not in its memory.stat
  EXPECT_FALSE(replica->psi.available);

  std::optional<model::CgroupSample> root = read_cgroup_sample(fake.layout, "/");
  ASSERT_TRUE(root.has_value());
  EXPECT_FALSE(root->limit_bytes.has_value());
  // anon + file + kernel + sock of the root's memory.stat.
  EXPECT_EQ(root->usage_bytes, 523763712u + 14680064u + 9437184u + 4096u);
  EXPECT_TRUE(root->psi.available);

  EXPECT_FALSE(read_cgroup_sample(fake.layout, "/init.scope").has_value());
}

TEST(SamplerCgroupSample, V2ListsOnlyCgroupsWithTheMemoryController) {
  FakeV2 fake;
  EXPECT_EQ(list_memory_cgroups(fake.layout),
            (std::vector<std::string>{"/", "/db", "/db/replica"}));
  EXPECT_EQ(resolve_cgroup_argument(fake.layout, fake.layout.memory_root + "/db/replica"),
            "/db/replica");
  EXPECT_EQ(resolve_cgroup_argument(fake.layout, "init.scope"), std::nullopt);
}

TEST(SamplerCgroupSample, ReadsThisProcesssOwnCgroup) {
  CgroupLayout layout = detect_cgroup_layout();
  std::ifstream file("/proc/self/cgroup");
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::string mine = memory_cgroup_of(text, layout);
  ASSERT_FALSE(mine.empty());
  ASSERT_EQ(mine.front(), '/');
  std::optional<model::CgroupSample> sample = read_cgroup_sample(layout, mine);
  ASSERT_TRUE(sample.has_value()) << mine;
  EXPECT_EQ(sample->path, mine);
  EXPECT_EQ(sample->id, inode_of(layout.memory_root + (mine == "/" ? "" : mine)));
  EXPECT_GT(sample->usage_bytes, 0u);  // this test process is charged to it
  EXPECT_GT(sample->pgfault, 0u);

  std::vector<std::string> all = list_memory_cgroups(layout);
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front(), "/");
  EXPECT_NE(std::find(all.begin(), all.end(), mine), all.end()) << mine;
  EXPECT_EQ(resolve_cgroup_argument(layout, layout.memory_root + mine), mine);
}

// ---------------------------------------------------------------------------------------------
// Processes

TEST(SamplerProcesses, ParsesStatWithParenthesesInTheCommand) {
  std::optional<ProcStat> stat = parse_proc_stat(kProcStat);
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(stat->pid, 674u);
  EXPECT_EQ(stat->comm, "rd) (x");
  EXPECT_EQ(stat->state, 'R');
  EXPECT_EQ(stat->flags, 4458496u);
  EXPECT_EQ(stat->minflt, 98884u);
  EXPECT_EQ(stat->majflt, 416u);
  EXPECT_EQ(stat->starttime, 988651u);
  EXPECT_FALSE(stat->flags & kPfKthread);

  std::optional<ProcStat> kthread = parse_proc_stat(
      "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 3 0 0 20 0 1 0 1 0 0 18446744073709551615 "
      "0 0 0 0 0 0 0 2147483647 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n");
  ASSERT_TRUE(kthread.has_value());
  EXPECT_TRUE(kthread->flags & kPfKthread);
  EXPECT_EQ(kthread->starttime, 1u);

  EXPECT_FALSE(parse_proc_stat("").has_value());
  EXPECT_FALSE(parse_proc_stat("12 (truncated) S 1 2 3\n").has_value());
}

TEST(SamplerProcesses, ParsesStatusSizesInBytes) {
  model::ProcessSample sample;
  ASSERT_TRUE(parse_proc_status(kProcStatus, sample));
  EXPECT_EQ(sample.rss_anon_bytes, 2812ull * 1024);
  EXPECT_EQ(sample.rss_file_bytes, 47316ull * 1024);
  EXPECT_EQ(sample.rss_shmem_bytes, 0u);
  EXPECT_EQ(sample.swap_bytes, 0u);

  model::ProcessSample swapped;
  ASSERT_TRUE(
      parse_proc_status("VmRSS:\t  1024 kB\nRssAnon:\t  1000 kB\nRssFile:\t  24 kB\n"
                        "RssShmem:\t  0 kB\nVmSwap:\t  655360 kB\n",
                        swapped));
  EXPECT_EQ(swapped.swap_bytes, 655360ull * 1024);

  // A zombie's status stops before the memory lines.
  model::ProcessSample zombie;
  EXPECT_FALSE(parse_proc_status("Name:\tdefunct\nState:\tZ (zombie)\nThreads:\t1\n", zombie));
}

TEST(SamplerProcesses, ScansAFakeProcSkippingKernelThreadsZombiesAndTheVanished) {
  TempDir proc;
  const std::string& p = proc.path();
  write_file(p + "/674/stat", kProcStat);
  write_file(p + "/674/status", kProcStatus);
  write_file(p + "/674/cgroup", kV1ProcCgroup);
  write_file(p + "/2/stat",
             "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 3 0 0 20 0 1 0 1 0 0 0 0 0 0\n");
  write_file(p + "/2/status", "Name:\tkthreadd\nKthread:\t1\n");
  write_file(p + "/2/cgroup", "0::/\n");
  write_file(p + "/90/stat",
             "90 (defunct) Z 1 90 90 0 -1 4227084 7 0 0 0 0 0 0 0 20 0 1 0 500 0 0 0 0 0\n");
  write_file(p + "/90/status", "Name:\tdefunct\nState:\tZ (zombie)\n");
  write_file(p + "/91/stat",  // exited after its stat was listed: no status any more
             "91 (gone) S 1 91 91 0 -1 4194560 7 0 0 0 0 0 0 0 20 0 1 0 600 0 0 0 0 0\n");
  write_file(p + "/self/stat", kProcStat);  // not a pid: ignored
  fs::create_directories(p + "/92");        // exited before its stat was read

  CgroupLayout layout{1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"};
  ProcessScanCounters counters;
  std::vector<model::ProcessSample> processes = scan_processes(layout, p, &counters);
  ASSERT_EQ(processes.size(), 1u);
  const model::ProcessSample& reader = processes[0];
  EXPECT_EQ(reader.pid, 674u);
  EXPECT_EQ(reader.comm, "rd) (x");
  EXPECT_EQ(reader.start_time_ticks, 988651u);
  EXPECT_EQ(reader.minor_faults, 98884u);
  EXPECT_EQ(reader.major_faults, 416u);
  EXPECT_EQ(reader.rss_file_bytes, 47316ull * 1024);
  EXPECT_EQ(reader.cgroup, "/memtrail-sampler-capture");
  EXPECT_EQ(counters.kernel_threads, 1u);
  EXPECT_EQ(counters.without_memory, 1u);
  EXPECT_EQ(counters.vanished, 2u);
  EXPECT_EQ(counters.unreadable, 0u);
}

TEST(SamplerProcesses, ScannerRereadsTheCgroupAfterAnExecAPidReuseOrItsPeriod) {
  TempDir proc;
  const std::string& p = proc.path();
  const std::string stat = kProcStat;
  write_file(p + "/674/stat", stat);
  write_file(p + "/674/status", kProcStatus);
  write_file(p + "/674/cgroup", "0::/a\n");
  CgroupLayout layout{2, "/sys/fs/cgroup", "/sys/fs/cgroup"};
  ProcessScanner scanner(layout, p, 3);
  auto cgroup_now = [&] {
    std::vector<model::ProcessSample> processes = scanner.scan();
    return processes.size() == 1 ? processes[0].cgroup : "?";
  };
  EXPECT_EQ(cgroup_now(), "/a");

  // Moved while running: seen at the latest after `refresh_scans` scans, not at once.
  write_file(p + "/674/cgroup", "0::/b\n");
  EXPECT_EQ(cgroup_now(), "/a");
  int scans = 1;
  while (cgroup_now() != "/b" && scans < 10) ++scans;
  EXPECT_LE(scans, 3);

  // An exec (new comm) or a reused pid (new start time): read again at once.
  write_file(p + "/674/cgroup", "0::/c\n");
  std::string execed = stat;
  execed.replace(execed.find("rd) (x"), 6, "python");
  write_file(p + "/674/stat", execed);
  EXPECT_EQ(cgroup_now(), "/c");
  write_file(p + "/674/cgroup", "0::/d\n");
  std::string reused = execed;
  reused.replace(reused.find(" 988651 "), 8, " 999999 ");
  write_file(p + "/674/stat", reused);
  EXPECT_EQ(cgroup_now(), "/d");

  // Gone and back with the same identity: its cache entry was dropped with it.
  fs::rename(p + "/674", p + "/away");
  EXPECT_EQ(scanner.scan().size(), 0u);
  write_file(p + "/away/cgroup", "0::/e\n");
  fs::rename(p + "/away", p + "/674");
  EXPECT_EQ(cgroup_now(), "/e");
}

TEST(SamplerProcesses, ScannerRereadsStatusOnlyWhenFaultsOrResidentSizeMoved) {
  TempDir proc;
  const std::string& p = proc.path();
  const std::string stat = kProcStat;
  auto status_with_anon = [](int kib) {
    return "RssAnon:\t" + std::to_string(kib) + " kB\nRssFile:\t0 kB\nRssShmem:\t0 kB\n";
  };
  write_file(p + "/674/stat", stat);
  write_file(p + "/674/status", status_with_anon(100));
  write_file(p + "/674/cgroup", "0::/a\n");
  CgroupLayout layout{2, "/sys/fs/cgroup", "/sys/fs/cgroup"};
  ProcessScanner scanner(layout, p, 100);  // no periodic refresh within this test
  auto anon_now = [&] {
    std::vector<model::ProcessSample> processes = scanner.scan();
    return processes.size() == 1 ? processes[0].rss_anon_bytes / 1024 : 0;
  };
  EXPECT_EQ(anon_now(), 100u);
  // Same faults, same resident size: status is not read again (an idle process costs one
  // file), so a change there alone is not seen...
  write_file(p + "/674/status", status_with_anon(200));
  EXPECT_EQ(anon_now(), 100u);
  // ...until stat moves: here one more minor fault (field 10, 98884 in the capture).
  std::string faulted = stat;
  faulted.replace(faulted.find(" 98884 "), 7, " 98885 ");
  write_file(p + "/674/stat", faulted);
  EXPECT_EQ(anon_now(), 200u);
}

TEST(SamplerProcesses, ScanFindsThisTestProcess) {
  // 16 MiB of touched private memory, so RssAnon cannot be small.
  constexpr size_t kBytes = 16 << 20;
  std::vector<char> block(kBytes);
  for (size_t i = 0; i < kBytes; i += 4096) block[i] = static_cast<char>(i);

  CgroupLayout layout = detect_cgroup_layout();
  ProcessScanCounters counters;
  std::vector<model::ProcessSample> processes = scan_processes(layout, "/proc", &counters);
  auto self = std::find_if(processes.begin(), processes.end(), [](const auto& process) {
    return process.pid == static_cast<uint32_t>(::getpid());
  });
  ASSERT_NE(self, processes.end());
  EXPECT_EQ(self->comm, std::string(program_invocation_short_name).substr(0, 15));
  EXPECT_GE(self->rss_anon_bytes, kBytes);
  EXPECT_GT(self->minor_faults, 0u);
  EXPECT_FALSE(self->cgroup.empty());
  // Started within the last 10 minutes: starttime is field 22, in clock ticks since boot.
  std::ifstream uptime_file("/proc/uptime");
  double uptime_s = 0;
  uptime_file >> uptime_s;
  double started_s =
      static_cast<double>(self->start_time_ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  EXPECT_LE(started_s, uptime_s + 1);
  EXPECT_GT(started_s, uptime_s - 600);
  EXPECT_GE(block[4096], 0);  // keep the block alive until after the scan

  // kthreadd (pid 2) is a kernel thread wherever the pid namespace shows it.
  std::ifstream kthreadd("/proc/2/stat");
  std::string line;
  if (std::getline(kthreadd, line) && line.find("(kthreadd)") != std::string::npos) {
    EXPECT_EQ(std::find_if(processes.begin(), processes.end(),
                           [](const auto& process) { return process.pid == 2; }),
              processes.end());
    EXPECT_GT(counters.kernel_threads, 0u);
  }
}

}  // namespace
}  // namespace memtrail::sampler
