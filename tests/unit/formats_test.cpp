// SPDX-License-Identifier: Apache-2.0
// Folded stacks, pprof, reading JSON back, and diffs: each output parsed back and checked.
#include "report/formats.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "common/error.h"
#include "profile.pb.h"
#include "report/diff.h"
#include "report/flamegraph.h"
#include "report/json_reader.h"
#include "report/json_report.h"
#include "report/memory_plot.h"

namespace memtrail::report {
namespace {

model::Frame frame(uint64_t address, std::string module, uint64_t offset,
                   std::optional<std::string> function, bool inlined = false,
                   std::optional<uint32_t> line = std::nullopt) {
  model::Frame result;
  result.address = address;
  result.module = std::move(module);
  result.offset = offset;
  result.function = std::move(function);
  result.file = function ? std::optional<std::string>("/src/a.c") : std::nullopt;
  result.line = line;
  result.inlined = inlined;
  return result;
}

model::Report two_site_report() {
  model::Report report;
  report.tool_version = "1.2.3";
  report.host = "h";
  report.kernel = "k";
  report.start_time_unix_ms = 1'700'000'000'000;
  report.end_time_unix_ms = 1'700'000'030'500;
  report.duration_s = 30.5;
  report.top = 10;
  report.final = true;
  report.targets.push_back({42,
                            "server",
                            {"server", "-x"},
                            "/srv/server",
                            "/lib/libc.so.6",
                            false,
                            std::nullopt,
                            "glibc",
                            {},
                            {},
                            {},
                            std::nullopt,
                            std::nullopt,
                            std::nullopt,
                            ""});
  model::LeakSite leak;
  leak.pid = 42;
  leak.allocator = "malloc";
  leak.outstanding_bytes = 7000;
  leak.outstanding_allocations = 7;
  leak.total_allocated_bytes = 9000;
  leak.total_allocations = 9;
  leak.oldest_age_s = 20;
  // helper() inlined into leak_here() at one address, called from main().
  leak.stack = {frame(0x1000, "/srv/server", 0x100, "helper", true, 5),
                frame(0x1000, "/srv/server", 0x100, "leak_here", false, 42),
                frame(0x2000, "/srv/server", 0x200, "main", false, 99)};
  model::Growth growth;
  growth.verdict = "leak";
  growth.bytes_per_s = 230;
  growth.reason = "+13.5 KiB/min";
  growth.series = {{10, 2000, 2}, {20, 4500, 4}, {30, 7000, 7}};
  growth.points = 3;
  growth.span_s = 20;
  leak.growth = growth;
  model::LeakSite buffer = leak;
  buffer.outstanding_bytes = 4096;
  buffer.outstanding_allocations = 1;
  buffer.stack = {frame(0x7000, "/lib/libc.so.6", 0x700, std::nullopt)};
  buffer.growth->verdict = "steady";
  buffer.suppressed = "glibc stdio buffer";
  report.leaks = {leak, buffer};
  report.totals.outstanding_bytes = 11096;
  report.totals.outstanding_allocations = 8;
  report.totals.sites = 2;
  report.notes = {"a note"};
  return report;
}

TEST(Folded, OneLinePerSiteOutermostFirstWithItsBytes) {
  std::ostringstream out;
  render_folded(two_site_report(), out);
  EXPECT_EQ(out.str(),
            "server;main;leak_here;helper 7000\n"
            "server;libc.so.6+0x700 4096\n");
}

TEST(Pprof, PeriodTypeDefaultTypeAndStringLabels) {
  auto report = two_site_report();
  PprofOptions options;
  options.default_sample_type = "alloc_space";
  options.labels = {{"comm", "leaky"}, {"pod_uid", ""}, {"container_id", "abc123"}};
  perftools::profiles::Profile profile;
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(report, options))));
  auto text = [&](int64_t index) { return profile.string_table(static_cast<int>(index)); };
  EXPECT_EQ(text(profile.default_sample_type()), "alloc_space");
  EXPECT_EQ(text(profile.period_type().type()), "space");
  EXPECT_EQ(text(profile.period_type().unit()), "bytes");
  EXPECT_EQ(profile.period(), 1);  // every allocation recorded
  for (const auto& sample : profile.sample()) {
    std::map<std::string, std::string> labels;
    for (const auto& label : sample.label()) {
      if (label.str() != 0) labels[text(label.key())] = text(label.str());
    }
    // Beside the site's own (verdict, suppressed); empty values are left out.
    EXPECT_EQ(labels["comm"], "leaky");
    EXPECT_EQ(labels["container_id"], "abc123");
    EXPECT_EQ(labels.count("pod_uid"), 0u);
  }
  report.sample_rate = 4096;
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(report))));
  EXPECT_EQ(profile.period(), 4096);
}

TEST(Pprof, DecodesBackToTheSameSitesTypesAndInlinedLines) {
  std::string gz = to_pprof(two_site_report());
  ASSERT_GE(gz.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(gz[0]), 0x1f);  // gzip magic
  EXPECT_EQ(static_cast<unsigned char>(gz[1]), 0x8b);
  perftools::profiles::Profile profile;
  ASSERT_TRUE(profile.ParseFromString(gunzip(gz)));
  auto text = [&](int64_t index) { return profile.string_table(static_cast<int>(index)); };
  EXPECT_EQ(text(0), "");
  ASSERT_EQ(profile.sample_type_size(), 4);
  std::vector<std::string> types;
  for (const auto& type : profile.sample_type()) types.push_back(text(type.type()));
  EXPECT_EQ(types, (std::vector<std::string>{"alloc_objects", "alloc_space", "inuse_objects",
                                             "inuse_space"}));
  EXPECT_EQ(text(profile.default_sample_type()), "inuse_space");
  ASSERT_EQ(profile.sample_size(), 2);
  const auto& sample = profile.sample(0);
  EXPECT_EQ(std::vector<int64_t>(sample.value().begin(), sample.value().end()),
            (std::vector<int64_t>{9, 9000, 7, 7000}));
  // Two locations: the inlined pair at 0x1000 (helper, then leak_here), and main.
  ASSERT_EQ(sample.location_id_size(), 2);
  std::map<uint64_t, const perftools::profiles::Location*> locations;
  for (const auto& location : profile.location()) locations[location.id()] = &location;
  std::map<uint64_t, std::string> functions;
  for (const auto& function : profile.function()) functions[function.id()] = text(function.name());
  const auto& leaf = *locations.at(sample.location_id(0));
  ASSERT_EQ(leaf.line_size(), 2);
  EXPECT_EQ(functions.at(leaf.line(0).function_id()), "helper");
  EXPECT_EQ(leaf.line(0).line(), 5);
  EXPECT_EQ(functions.at(leaf.line(1).function_id()), "leak_here");
  EXPECT_EQ(functions.at(locations.at(sample.location_id(1))->line(0).function_id()), "main");
  std::map<std::string, std::string> labels;
  for (const auto& label : profile.sample(1).label()) {
    labels[text(label.key())] = label.str() ? text(label.str()) : std::to_string(label.num());
  }
  EXPECT_EQ(labels["pid"], "42");
  EXPECT_EQ(labels["verdict"], "steady");
  EXPECT_EQ(labels["suppressed"], "glibc stdio buffer");
  EXPECT_EQ(labels.count("kind"), 0u);  // a site that does not say it (an older report)
}

// Each sample says what its site holds: `go tool pprof -tagfocus kind=python_objects`.
TEST(Pprof, EachSampleSaysItsSitesKind) {
  auto report = two_site_report();
  report.leaks[0].kind = "python_objects";
  report.leaks[1].kind = "native";
  perftools::profiles::Profile profile;
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(report))));
  auto text = [&](int64_t index) { return profile.string_table(static_cast<int>(index)); };
  std::vector<std::string> kinds;
  for (const auto& sample : profile.sample()) {
    for (const auto& label : sample.label()) {
      if (text(label.key()) == "kind") kinds.push_back(text(label.str()));
    }
  }
  EXPECT_EQ(kinds, (std::vector<std::string>{"python_objects", "native"}));
}

// A site whose bytes hold objects of a type sized by estimate says so: `sizing=estimated`; a
// site of exactly sized objects, or a native one, has no such label.
TEST(Pprof, ASiteWithTypesSizedByEstimateIsLabelled) {
  auto report = two_site_report();
  model::PythonType arrays{42, "array.array", 40, 3200, 0};
  arrays.sizing = model::PythonType::kSizingEstimated;
  model::PythonType strs{42, "str", 40, 2400, 0};
  strs.sizing = model::PythonType::kSizingExact;
  report.leaks[0].kind = report.leaks[1].kind = "python_objects";
  report.leaks[0].python_types = {strs, arrays};
  report.leaks[1].python_types = {strs};
  perftools::profiles::Profile profile;
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(report))));
  auto text = [&](int64_t index) { return profile.string_table(static_cast<int>(index)); };
  std::vector<std::string> sizing(static_cast<size_t>(profile.sample_size()));
  for (int i = 0; i < profile.sample_size(); ++i) {
    for (const auto& label : profile.sample(i).label()) {
      if (text(label.key()) == "sizing") sizing[static_cast<size_t>(i)] = text(label.str());
    }
  }
  EXPECT_EQ(sizing, (std::vector<std::string>{"estimated", ""}));
}

// two_site_report() with what the process mapped (its executable's code first, as assemble
// puts it, then the library) and a site that freed everything it allocated.
model::Report mapped_report() {
  model::Report report = two_site_report();
  report.targets[0].mappings = {{"/srv/server", 0x1000, 0x3000, 0x1000},
                                {"/lib/libc.so.6", 0x7000, 0x8000, 0x26000}};
  model::LeakSite churn;
  churn.pid = 42;
  churn.total_allocated_bytes = 64000;
  churn.total_allocations = 1000;
  churn.freed_allocations = 1000;
  churn.stack = {frame(0x1800, "/srv/server", 0x180, "churn", false, 12),
                 frame(0x2000, "/srv/server", 0x200, "main", false, 99)};
  report.freed_sites = {churn};
  report.freed_omitted = {3, 30, 3000};
  return report;
}

// go tool pprof names the first mapping as the profile's File, and turns an address into a
// file offset through its mapping: each location points into the mapping that holds it.
TEST(Pprof, MappingsCarryTheirRangesTheExecutableFirstAndLocationsPointIntoThem) {
  model::Report report = mapped_report();
  // A Python frame and an address no file maps get a mapping that has only their name.
  report.leaks[1].stack.push_back(frame(0x9000, "[unknown]", 0x9000, std::nullopt));
  perftools::profiles::Profile profile;
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(report))));
  auto text = [&](int64_t index) { return profile.string_table(static_cast<int>(index)); };
  ASSERT_EQ(profile.mapping_size(), 3);
  const auto& main = profile.mapping(0);
  EXPECT_EQ(main.id(), 1u);
  EXPECT_EQ(text(main.filename()), "/srv/server");
  EXPECT_EQ(main.memory_start(), 0x1000u);
  EXPECT_EQ(main.memory_limit(), 0x3000u);
  EXPECT_EQ(main.file_offset(), 0x1000u);
  EXPECT_EQ(text(profile.mapping(1).filename()), "/lib/libc.so.6");
  EXPECT_EQ(profile.mapping(1).memory_start(), 0x7000u);
  EXPECT_EQ(profile.mapping(1).memory_limit(), 0x8000u);
  EXPECT_EQ(profile.mapping(1).file_offset(), 0x26000u);
  EXPECT_EQ(text(profile.mapping(2).filename()), "[unknown]");
  EXPECT_EQ(profile.mapping(2).memory_limit(), 0u);
  std::map<uint64_t, uint64_t> mapping_of;  // address -> mapping id
  for (const auto& location : profile.location()) {
    mapping_of[location.address()] = location.mapping_id();
  }
  EXPECT_EQ(mapping_of.at(0x1000), 1u);
  EXPECT_EQ(mapping_of.at(0x2000), 1u);
  EXPECT_EQ(mapping_of.at(0x1800), 1u);
  EXPECT_EQ(mapping_of.at(0x7000), 2u);
  EXPECT_EQ(mapping_of.at(0x9000), 3u);
}

// alloc_objects and alloc_space count every allocation, also of sites that freed them all;
// those beyond the listed ones are said in a comment.
TEST(Pprof, SitesThatFreedEverythingCountInAllocSpaceWithNothingInUse) {
  perftools::profiles::Profile profile;
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(mapped_report()))));
  auto text = [&](int64_t index) { return profile.string_table(static_cast<int>(index)); };
  ASSERT_EQ(profile.sample_size(), 3);
  const auto& freed = profile.sample(2);
  EXPECT_EQ(std::vector<int64_t>(freed.value().begin(), freed.value().end()),
            (std::vector<int64_t>{1000, 64000, 0, 0}));
  std::map<uint64_t, std::string> function_of_location;
  std::map<uint64_t, std::string> functions;
  for (const auto& function : profile.function()) functions[function.id()] = text(function.name());
  for (const auto& location : profile.location()) {
    function_of_location[location.id()] = functions.at(location.line(0).function_id());
  }
  ASSERT_EQ(freed.location_id_size(), 2);
  EXPECT_EQ(function_of_location.at(freed.location_id(0)), "churn");
  EXPECT_EQ(function_of_location.at(freed.location_id(1)), "main");
  ASSERT_EQ(profile.comment_size(), 1);
  EXPECT_EQ(text(profile.comment(0)),
            "3 more sites freed all they allocated (3000 bytes in 30 allocations): not in "
            "alloc_objects/alloc_space");
  // Some of them Python object sites seen part of the time: their sums are estimates.
  model::Report estimated = mapped_report();
  estimated.freed_omitted.estimated = true;
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(estimated))));
  ASSERT_EQ(profile.comment_size(), 1);
  EXPECT_EQ(text(profile.comment(0)),
            "3 more sites freed all they allocated (~3000 bytes in ~30 allocations, estimates: "
            "Python objects seen part of the time): not in alloc_objects/alloc_space");
  // Without any, no comment.
  model::Report none = two_site_report();
  ASSERT_TRUE(profile.ParseFromString(gunzip(to_pprof(none))));
  EXPECT_EQ(profile.comment_size(), 0);
  EXPECT_EQ(profile.sample_size(), 2);
}

TEST(JsonReader, ReadsBackFreedSitesAndMappings) {
  model::Report original = mapped_report();
  auto json = to_json(original, 5.0);
  ASSERT_EQ(json["freed_sites"].size(), 1u);
  EXPECT_EQ(json["freed_sites"][0]["total_allocated_bytes"], 64000);
  EXPECT_FALSE(json["freed_sites"][0].contains("outstanding_bytes"));
  EXPECT_EQ(json["freed_sites_omitted"]["sites"], 3);
  EXPECT_EQ(json["targets"][0]["mappings"][0]["start"], 0x1000);
  model::Report read = from_json(nlohmann::json::parse(json.dump()));
  ASSERT_EQ(read.freed_sites.size(), 1u);
  EXPECT_EQ(read.freed_sites[0].pid, 42u);
  EXPECT_EQ(read.freed_sites[0].total_allocated_bytes, 64000u);
  EXPECT_EQ(read.freed_sites[0].total_allocations, 1000u);
  EXPECT_EQ(read.freed_sites[0].freed_allocations, 1000u);
  EXPECT_EQ(read.freed_sites[0].outstanding_bytes, 0u);
  ASSERT_EQ(read.freed_sites[0].stack.size(), 2u);
  EXPECT_EQ(read.freed_sites[0].stack[0].function, "churn");
  EXPECT_EQ(read.freed_omitted.sites, 3u);
  EXPECT_EQ(read.freed_omitted.allocations, 30u);
  EXPECT_EQ(read.freed_omitted.bytes, 3000u);
  ASSERT_EQ(read.targets[0].mappings.size(), 2u);
  EXPECT_EQ(read.targets[0].mappings[1].path, "/lib/libc.so.6");
  EXPECT_EQ(read.targets[0].mappings[1].start, 0x7000u);
  EXPECT_EQ(read.targets[0].mappings[1].limit, 0x8000u);
  EXPECT_EQ(read.targets[0].mappings[1].file_offset, 0x26000u);
  // The pprof of a report read back is the pprof of the run.
  EXPECT_EQ(gunzip(to_pprof(read)), gunzip(to_pprof(original)));
  // A report from before either existed reads with none; version 1 writes none.
  auto old = to_json(two_site_report(), 5.0);
  old.erase("freed_sites");
  old.erase("freed_sites_omitted");
  model::Report old_read = from_json(nlohmann::json::parse(old.dump()));
  EXPECT_TRUE(old_read.freed_sites.empty());
  EXPECT_EQ(old_read.freed_omitted.sites, 0u);
  EXPECT_TRUE(old_read.targets[0].mappings.empty());
  auto v1 = to_json(original, 5.0, 1);
  EXPECT_FALSE(v1.contains("freed_sites"));
  EXPECT_FALSE(v1["targets"][0].contains("mappings"));
}

TEST(JsonReader, ReadsBackWhatToJsonWrote) {
  model::Report original = two_site_report();
  model::Report read = from_json(nlohmann::json::parse(to_json(original, 5.0).dump()));
  EXPECT_EQ(read.tool_version, "1.2.3");
  EXPECT_EQ(read.start_time_unix_ms, original.start_time_unix_ms);
  EXPECT_EQ(read.end_time_unix_ms, original.end_time_unix_ms);
  ASSERT_EQ(read.targets.size(), 1u);
  EXPECT_EQ(read.targets[0].cmdline, original.targets[0].cmdline);
  ASSERT_EQ(read.leaks.size(), 2u);
  const auto& site = read.leaks[0];
  EXPECT_EQ(site.outstanding_bytes, 7000u);
  ASSERT_EQ(site.stack.size(), 3u);
  EXPECT_TRUE(site.stack[0].inlined);
  EXPECT_EQ(site.stack[1].function, "leak_here");
  EXPECT_EQ(site.stack[1].line, 42u);
  ASSERT_TRUE(site.growth);
  EXPECT_EQ(site.growth->verdict, "leak");
  ASSERT_EQ(site.growth->series.size(), 3u);
  EXPECT_DOUBLE_EQ(site.growth->series[1].bytes, 4500);
  EXPECT_FALSE(read.leaks[1].stack[0].function);
  EXPECT_EQ(read.leaks[1].suppressed, "glibc stdio buffer");
  // The walker's summary survives the trip (report FILE shows it again).
  model::Report with_unwind = original;
  model::UnwindSummary unwind;
  unwind.mode = "dwarf";
  unwind.stacks = 3;
  unwind.truncated_stacks = 1;
  unwind.truncated_by_reason = {{"unknown_code", 1}};
  unwind.modules = {{"/usr/lib/x86_64-linux-gnu/libc.so.6", "cfi", "3713 functions", 28274}};
  unwind.table_rows = 28274;
  unwind.python_segments_walked = 40;
  unwind.python_segments_reused = 960;
  with_unwind.unwind = unwind;
  with_unwind.leaks[0].stack_truncation_reason = "unknown_code";
  model::Report reread = from_json(nlohmann::json::parse(to_json(with_unwind, 5.0).dump()));
  ASSERT_TRUE(reread.unwind);
  EXPECT_EQ(reread.unwind->mode, "dwarf");
  EXPECT_EQ(reread.unwind->truncated_by_reason, unwind.truncated_by_reason);
  ASSERT_EQ(reread.unwind->modules.size(), 1u);
  EXPECT_EQ(reread.unwind->modules[0].rows, 28274u);
  EXPECT_EQ(reread.unwind->python_segments_walked, 40u);
  EXPECT_EQ(reread.unwind->python_segments_reused, 960u);
  EXPECT_EQ(reread.leaks[0].stack_truncation_reason, "unknown_code");
  EXPECT_FALSE(read.unwind);  // a report without one reads back without one
  with_unwind.targets[0].losses.drops = 7;
  EXPECT_EQ(
      from_json(nlohmann::json::parse(to_json(with_unwind, 5.0).dump())).targets[0].losses.drops,
      7u);
  // So do Python frames, the interpreter and the objects by type (report FILE shows them).
  model::Report python = original;
  python.leaks[0].stack[1].python = true;
  python.targets[0].python = model::PythonRuntime{"3.11.2", "/usr/bin/python3.11", true, ""};
  python.python_types =
      std::vector<model::PythonType>{{42, "Session", 2000, 112000, 800.5, 6001, 4001}};
  model::Report python_read = from_json(nlohmann::json::parse(to_json(python, 5.0).dump()));
  EXPECT_TRUE(python_read.leaks[0].stack[1].python);
  EXPECT_FALSE(python_read.leaks[0].stack[0].python);
  ASSERT_TRUE(python_read.targets[0].python);
  EXPECT_EQ(python_read.targets[0].python->version, "3.11.2");
  ASSERT_TRUE(python_read.python_types);
  ASSERT_EQ(python_read.python_types->size(), 1u);
  EXPECT_EQ((*python_read.python_types)[0].outstanding_bytes, 112000);
  EXPECT_DOUBLE_EQ((*python_read.python_types)[0].growth_objects_per_s, 800.5);
  EXPECT_EQ((*python_read.python_types)[0].made, 6001u);
  EXPECT_EQ((*python_read.python_types)[0].source, "allocator_probes");
  EXPECT_FALSE(read.python_types);
  // A site of Python objects: its kind and its types, from the tracked objects.
  python.leaks[0].kind = "python_objects";
  python.leaks[0].allocator = "python_object";
  model::PythonType record{42, "Record", 3000, 168000, 50};
  record.growth_bytes_per_s = 2800;
  record.source = "objects";
  python.leaks[0].python_types = {record};
  python.leaks[1].kind = "native";
  (*python.python_types)[0] = record;
  python_read = from_json(nlohmann::json::parse(to_json(python, 5.0).dump()));
  EXPECT_EQ(python_read.leaks[0].kind, "python_objects");
  EXPECT_EQ(python_read.leaks[1].kind, "native");
  ASSERT_EQ(python_read.leaks[0].python_types.size(), 1u);
  EXPECT_EQ(python_read.leaks[0].python_types[0].type, "Record");
  EXPECT_EQ(python_read.leaks[0].python_types[0].outstanding_objects, 3000);
  EXPECT_EQ(python_read.leaks[0].python_types[0].outstanding_bytes, 168000);
  EXPECT_DOUBLE_EQ(python_read.leaks[0].python_types[0].growth_bytes_per_s, 2800);
  EXPECT_EQ((*python_read.python_types)[0].source, "objects");
  EXPECT_DOUBLE_EQ((*python_read.python_types)[0].growth_bytes_per_s, 2800);
  EXPECT_TRUE(read.leaks[0].kind.empty());  // written before sites said their kind
  // The coverage statement survives the trip; a report written before it reads without one.
  model::Report covered = original;
  covered.targets[0].memory = model::ProcessMemory{};
  covered.targets[0].memory->coverage =
      model::ProcessMemory::Coverage{true, 12.5, 4 << 20, 3 << 20, 0.75, ""};
  model::Report covered_read = from_json(nlohmann::json::parse(to_json(covered, 5.0).dump()));
  ASSERT_TRUE(covered_read.targets[0].memory && covered_read.targets[0].memory->coverage);
  EXPECT_DOUBLE_EQ(covered_read.targets[0].memory->coverage->share, 0.75);
  EXPECT_DOUBLE_EQ(covered_read.targets[0].memory->coverage->traced_growth_bytes, 3 << 20);
  EXPECT_DOUBLE_EQ(covered_read.targets[0].memory->coverage->span_s, 12.5);
  auto older = nlohmann::json::parse(to_json(covered, 5.0).dump());
  older["targets"][0]["memory"].erase("coverage");
  model::Report older_read = from_json(older);
  ASSERT_TRUE(older_read.targets[0].memory);
  EXPECT_FALSE(older_read.targets[0].memory->coverage);
  // Version 1 reads too, without verdicts.
  model::Report v1 = from_json(nlohmann::json::parse(to_json(original, 5.0, 1).dump()));
  EXPECT_FALSE(v1.leaks[0].growth);
}

TEST(JsonReader, RefusesWhatIsNotAMemtrailReport) {
  EXPECT_THROW(from_json(nlohmann::json::parse(R"({"a": 1})")), Error);
  EXPECT_THROW(from_json(nlohmann::json::parse(R"({"schema": "memtrail.leaks/9"})")), Error);
  auto broken = to_json(two_site_report(), 5.0);
  broken["leaks"][0].erase("stack");
  try {
    from_json(nlohmann::json::parse(broken.dump()));
    FAIL() << "no error";
  } catch (const Error& error) {
    // Where and what, in words: not the JSON library's "[json.exception.out_of_range.403]".
    EXPECT_EQ(std::string(error.what()),
              "not a valid memtrail.leaks report: leaks[0]: field 'stack' is missing");
  }
}

// The message from_json throws for `document`, or "" when it reads.
std::string reader_error(const nlohmann::json& document) {
  try {
    from_json(document);
    return "";
  } catch (const Error& error) {
    return error.what();
  }
}

TEST(JsonReader, SaysWhichSchemaItFoundInOneLine) {
  EXPECT_EQ(reader_error(nlohmann::json::parse("[1, 2]")),
            "not a memtrail.leaks report: it holds a JSON array, not an object");
  EXPECT_EQ(reader_error(nlohmann::json::parse(R"({"schema": 7})")),
            "not a memtrail.leaks report: it has no \"schema\" naming one");
  EXPECT_NE(reader_error(nlohmann::json::parse(R"({"schema": "memtrail.paging/1"})"))
                .find("not a memtrail.leaks report: its schema is \"memtrail.paging/1\" "
                      "(memtrail paging --json)"),
            std::string::npos);
  EXPECT_EQ(reader_error(nlohmann::json::parse(R"({"schema": "memtrail.leaks/9"})")),
            "a memtrail.leaks/9 report; this memtrail reads memtrail.leaks/1 and "
            "memtrail.leaks/2");
  auto mistyped = to_json(two_site_report(), 5.0);
  mistyped["totals"]["frees"] = "many";
  EXPECT_EQ(reader_error(nlohmann::json::parse(mistyped.dump())),
            "not a valid memtrail.leaks report: totals: frees is string, not a number");
}

TEST(JsonReader, RefusesCountsOutOfRangeInsteadOfRenderingOtherNumbers) {
  // 1e308 bytes was read as 0 and shown as "0 B"; -1 would have been 16 EiB.
  for (const char* bad : {"1e308", "-1", "18446744073709551616", "2.5"}) {
    auto report = to_json(two_site_report(), 5.0);
    report["leaks"][1]["outstanding_bytes"] = nlohmann::json::parse(bad);
    EXPECT_NE(reader_error(nlohmann::json::parse(report.dump()))
                  .find("not a valid memtrail.leaks report: leaks[1]: outstanding_bytes is "),
              std::string::npos)
        << bad << ": " << reader_error(nlohmann::json::parse(report.dump()));
  }
  auto absurd = to_json(two_site_report(), 5.0);
  absurd["leaks"][0]["outstanding_bytes"] = 1e308;
  EXPECT_EQ(reader_error(nlohmann::json::parse(absurd.dump())),
            "not a valid memtrail.leaks report: leaks[0]: outstanding_bytes is 1e+308, not a "
            "whole number from 0 to 18446744073709551615");
  auto pid = to_json(two_site_report(), 5.0);
  pid["targets"][0]["pid"] = 5000000000;
  EXPECT_NE(reader_error(nlohmann::json::parse(pid.dump())).find("targets[0]: pid is 5000000000"),
            std::string::npos);
  // Whole numbers written as 3000.0 by another tool, and the largest count, still read.
  auto written_as_float = to_json(two_site_report(), 5.0);
  written_as_float["leaks"][0]["outstanding_bytes"] = 3000.0;
  written_as_float["totals"]["allocations"] = 18446744073709551615ull;
  model::Report read = from_json(nlohmann::json::parse(written_as_float.dump()));
  EXPECT_EQ(read.leaks[0].outstanding_bytes, 3000u);
  EXPECT_EQ(read.totals.allocations, 18446744073709551615ull);
}

TEST(Diff, MatchesSitesAcrossRunsByStackAndRanksByGrowth) {
  model::Report before = two_site_report();
  model::Report after = two_site_report();
  // Another run: another pid, other absolute addresses, the same module offsets.
  after.targets[0].pid = 777;
  for (auto& site : after.leaks) {
    site.pid = 777;
    for (auto& f : site.stack) f.address += 0x100000;
  }
  after.leaks[0].outstanding_bytes = 17000;
  after.leaks[0].outstanding_allocations = 17;
  after.leaks[1].outstanding_bytes = 0;  // gone below: not in the list
  after.leaks.pop_back();
  model::LeakSite fresh = after.leaks[0];
  fresh.stack = {frame(0x9000, "/srv/server", 0x900, "new_cache")};
  fresh.outstanding_bytes = 500;
  after.leaks.push_back(fresh);
  after.totals.outstanding_bytes = 17500;

  auto changes = diff_reports(before, after);
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(changes[0].delta_bytes(), 10000);
  EXPECT_TRUE(changes[0].in_before && changes[0].in_after);
  EXPECT_EQ(changes[1].delta_bytes(), 500);
  EXPECT_FALSE(changes[1].in_before);
  EXPECT_EQ(changes[2].delta_bytes(), -4096);
  EXPECT_FALSE(changes[2].in_after);

  std::ostringstream out;
  render_diff_text(changes, before, after, 20, out);
  std::string text = out.str();
  EXPECT_NE(text.find("Outstanding: 10.8 KiB -> 17.1 KiB (+6.3 KiB)"), std::string::npos) << text;
  EXPECT_NE(text.find("+9.8 KiB  6.8 KiB -> 16.6 KiB, 7 -> 17 blocks, leak"), std::string::npos)
      << text;
  EXPECT_NE(text.find("server: helper (a.c:5) < leak_here < main"), std::string::npos) << text;
  EXPECT_NE(text.find(", new"), std::string::npos) << text;
  EXPECT_NE(text.find("1 site shrank (1 gone entirely)."), std::string::npos) << text;

  // Python objects seen part of the time on one side: its figures, and the change, are
  // estimates, and say so; the other side's counts stay plain.
  after.leaks[0].estimated = true;
  after.totals.estimated = true;
  auto estimated = diff_reports(before, after);
  ASSERT_EQ(estimated.size(), 3u);
  EXPECT_FALSE(estimated[0].estimated_before);
  EXPECT_TRUE(estimated[0].estimated_after);
  std::ostringstream marked;
  render_diff_text(estimated, before, after, 20, marked);
  EXPECT_NE(marked.str().find("Outstanding: 10.8 KiB -> ~17.1 KiB (~+6.3 KiB)"), std::string::npos)
      << marked.str();
  EXPECT_NE(marked.str().find("~+9.8 KiB  6.8 KiB -> ~16.6 KiB, 7 -> ~17 blocks, leak"),
            std::string::npos)
      << marked.str();
  EXPECT_NE(marked.str().find("\n~: an estimate"), std::string::npos) << marked.str();
}

// Python objects of a type sized by estimate (array.array) in a site before: its bytes there,
// the change and the total before are estimates and say so; its object counts are counts.
TEST(Diff, BytesOfTypesSizedByEstimateAreMarked) {
  model::Report before = two_site_report();
  model::Report after = two_site_report();
  after.leaks[0].outstanding_bytes = 17000;
  auto type = [](const char* name, const char* sizing) {
    model::PythonType entry{4242, name, 10, 2000, 0};
    entry.source = "objects";
    entry.sizing = sizing;
    return entry;
  };
  before.leaks[0].python_types = {type("array.array", model::PythonType::kSizingEstimated),
                                  type("str", model::PythonType::kSizingExact)};
  before.python_types = before.leaks[0].python_types;
  after.leaks[0].python_types = {type("str", model::PythonType::kSizingExact)};
  after.python_types = after.leaks[0].python_types;
  auto changes = diff_reports(before, after);
  ASSERT_FALSE(changes.empty());
  EXPECT_TRUE(changes[0].sized_by_estimate_before);
  EXPECT_FALSE(changes[0].sized_by_estimate_after);
  EXPECT_FALSE(changes[0].estimated_before);
  std::ostringstream out;
  render_diff_text(changes, before, after, 20, out);
  EXPECT_NE(out.str().find("Outstanding: ~10.8 KiB -> 10.8 KiB (~+0 B)"), std::string::npos)
      << out.str();
  EXPECT_NE(out.str().find("~+9.8 KiB  ~6.8 KiB -> 16.6 KiB, 7 -> 7 blocks"), std::string::npos)
      << out.str();
  EXPECT_NE(out.str().find("\n~: an estimate"), std::string::npos) << out.str();
  // All exact on both sides: no mark, no legend.
  before.leaks[0].python_types = after.leaks[0].python_types;
  before.python_types = after.python_types;
  std::ostringstream exact;
  render_diff_text(diff_reports(before, after), before, after, 20, exact);
  EXPECT_EQ(exact.str().find('~'), std::string::npos) << exact.str();
}

TEST(FlameGraph, IsAnSvgWithOneBoxPerFrameSizedByBytesAndColoredByVerdict) {
  model::Report report = two_site_report();
  report.leaks[0].stack[2].function = "main<int>&";  // escaped, not raw markup
  std::string svg = render_flamegraph_svg(report);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  // all, server, then main > leak_here > helper, and the libc frame: 6 boxes.
  size_t boxes = 0;
  for (size_t at = svg.find("<g class=\"f\""); at != std::string::npos;
       at = svg.find("<g class=\"f\"", at + 1)) {
    ++boxes;
  }
  EXPECT_EQ(boxes, 6u);
  EXPECT_NE(svg.find("main&lt;int&gt;&amp;"), std::string::npos);
  EXPECT_EQ(svg.find("main<int>&"), std::string::npos);
  // helper (the leak's innermost frame) is red; the suppressed libc frame grey.
  EXPECT_NE(svg.find("helper at a.c:5 (7,000 B, 63.1%)"), std::string::npos) << svg;
  size_t helper = svg.find("data-name=\"helper\"");
  ASSERT_NE(helper, std::string::npos);
  EXPECT_NE(svg.find("fill=\"#e0412f\"", helper), std::string::npos);
  size_t libc = svg.find("data-name=\"libc.so.6+0x700\"");
  ASSERT_NE(libc, std::string::npos);
  EXPECT_EQ(svg.find("fill=", libc), svg.find("fill=\"#b8b8b8\"", libc));
  EXPECT_NE(svg.find("(10.8 KiB)"), std::string::npos);  // the total in the title
}

// The plot's structure as Python's XML parser sees it (so a malformed file fails here), one
// "KIND<TAB>TEXT<TAB>N" line per polyline (its name, its points), tick and legend label.
std::vector<std::string> parsed_plot(const std::string& svg) {
  char path[] = "/tmp/memtrail-plot-XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) return {"mkstemp failed"};
  ::close(fd);
  std::ofstream(path) << svg;
  std::string command = std::string("python3 -c '") + R"PY(
import sys, xml.etree.ElementTree as ET
ns = "{http://www.w3.org/2000/svg}"
root = ET.parse(sys.argv[1]).getroot()
for g in root.iter(ns + "g"):
    print("panel\t%s\t0" % g.get("data-pid"))
    for line in g.iter(ns + "polyline"):
        print("polyline\t%s\t%d" % (line.get("data-name"), len(line.get("points").split())))
    for text in g.iter(ns + "text"):
        kind = text.get("class") or "text"
        print("%s\t%s\t0" % (kind, "".join(text.itertext())))
)PY" + "' " + path + " 2>&1";
  std::vector<std::string> lines;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return {"popen failed"};
  char buffer[4096];
  while (std::fgets(buffer, sizeof(buffer), pipe)) {
    std::string line = buffer;
    if (!line.empty() && line.back() == '\n') line.pop_back();
    lines.push_back(line);
  }
  int status = ::pclose(pipe);
  std::remove(path);
  if (status != 0) lines.push_back("python3 failed");
  return lines;
}

bool has_line(const std::vector<std::string>& lines, const std::string& line) {
  return std::find(lines.begin(), lines.end(), line) != lines.end();
}

TEST(MemoryPlot, IsWellFormedSvgWithOnePolylinePerSeriesAxesInUnitsAndALegend) {
  model::Report report = two_site_report();
  report.targets[0].comm = "server<1>";  // escaped, not raw markup
  model::ProcessMemory memory;
  memory.series = {{0, 1 << 20, 0},
                   {10, 1.5 * (1 << 20), 2000},
                   {20, 2 << 20, 4500},
                   {30, 2.5 * (1 << 20), 7000}};
  report.targets[0].memory = memory;
  report.targets.push_back({43,
                            "worker",
                            {"worker"},
                            "/srv/worker",
                            "/lib/libc.so.6",
                            true,
                            std::nullopt,
                            "glibc",
                            {},
                            {},
                            {},
                            std::nullopt,
                            std::nullopt,
                            std::nullopt,
                            ""});
  // A slower grower in the same process (drawn after the leak), one that shrinks (not drawn)
  // and one in the second process, which has no memory samples yet.
  model::LeakSite slower = report.leaks[0];
  slower.stack = {frame(0x3000, "/srv/server", 0x300, "grower", false, 7)};
  slower.growth->verdict = "suspect";
  slower.growth->bytes_per_s = 50;
  slower.growth->series = {{20, 100, 1}, {30, 600, 2}};
  model::LeakSite shrinking = slower;
  shrinking.stack = {frame(0x4000, "/srv/server", 0x400, "shrinker", false, 9)};
  shrinking.growth->bytes_per_s = -10;
  model::LeakSite other = slower;
  other.pid = 43;
  // A Python program's site is named by its innermost Python frame, not the C code below it.
  model::Frame python_frame{0x7f00'0000'0000, "[python]", 0x2a,  "Cache.remember",
                            "/srv/app.py",    18,         false, true};
  other.stack = {frame(0x5000, "/srv/worker", 0x500, std::nullopt),
                 frame(0x5100, "/srv/worker", 0x510, "work", false, 3), python_frame};
  report.leaks.push_back(slower);
  report.leaks.push_back(shrinking);
  report.leaks.push_back(other);

  std::string svg = render_memory_plot_svg(report);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  // Self-contained: nothing fetched from elsewhere.
  EXPECT_EQ(svg.find("href"), std::string::npos);
  EXPECT_EQ(svg.find("server<1>"), std::string::npos);
  auto lines = parsed_plot(svg);
  std::string all;
  for (const auto& line : lines) all += line + "\n";
  ASSERT_FALSE(has_line(lines, "python3 failed")) << all;

  EXPECT_TRUE(has_line(lines, "panel\t42\t0")) << all;
  EXPECT_TRUE(has_line(lines, "panel\t43\t0")) << all;
  EXPECT_TRUE(has_line(lines, "title\tmemtrail: memory over time of pid 42 (server<1>)\t0")) << all;
  EXPECT_TRUE(has_line(lines, "title\tmemtrail: memory over time of pid 43 (worker), exited\t0"))
      << all;
  // One polyline per series, one point per sample: the two growing sites of 42 (slowest drawn
  // first, the process's own lines last, on top), RSS and traced, then the site of 43. Not the
  // suppressed or the shrinking ones.
  std::vector<std::string> polylines;
  for (const auto& line : lines) {
    if (line.rfind("polyline\t", 0) == 0) polylines.push_back(line);
  }
  EXPECT_EQ(polylines,
            (std::vector<std::string>{"polyline\tgrower (a.c:7): suspect, +50 B/s\t2",
                                      "polyline\thelper (a.c:5): leak, +230 B/s\t3",
                                      "polyline\ttraced outstanding bytes\t4",
                                      "polyline\tRSS (private: RssAnon)\t4",
                                      "polyline\tCache.remember (app.py:18): suspect, +50 B/s\t2"}))
      << all;
  // The legend names every line.
  for (const char* name :
       {"RSS (private: RssAnon)", "traced outstanding bytes", "helper (a.c:5): leak, +230 B/s",
        "grower (a.c:7): suspect, +50 B/s", "Cache.remember (app.py:18): suspect, +50 B/s"}) {
    EXPECT_TRUE(has_line(lines, std::string("legend\t") + name + "\t0")) << name << "\n" << all;
  }
  // Bytes in MiB up to 2.5 MiB in steps of 0.5; time in seconds past the 30.5 s run.
  for (const char* tick : {"0 MiB", "0.5 MiB", "2.5 MiB", "0 s", "5 s", "35 s"}) {
    EXPECT_TRUE(has_line(lines, std::string("tick\t") + tick + "\t0")) << tick << "\n" << all;
  }
  EXPECT_FALSE(has_line(lines, "tick\t3 MiB\t0")) << all;
  EXPECT_TRUE(has_line(lines, "text\tbytes (MiB)\t0")) << all;
  EXPECT_TRUE(has_line(lines, "text\ttime since tracing started (s)\t0")) << all;
  // Process 43's bytes axis fits its own site: bytes, not MiB.
  EXPECT_TRUE(has_line(lines, "tick\t600 B\t0")) << all;
}

TEST(MemoryPlot, SaysSoWhenAProcessHasNoSamples) {
  model::Report report = two_site_report();
  report.leaks.clear();
  std::string svg = render_memory_plot_svg(report);
  auto lines = parsed_plot(svg);
  std::string all;
  for (const auto& line : lines) all += line + "\n";
  ASSERT_FALSE(has_line(lines, "python3 failed")) << all;
  EXPECT_NE(svg.find("no memory samples"), std::string::npos);
  EXPECT_EQ(svg.find("<polyline"), std::string::npos);
}

}  // namespace
}  // namespace memtrail::report
