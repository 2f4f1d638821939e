// SPDX-License-Identifier: Apache-2.0
// Folded stacks and pprof.
#include "report/formats.h"

#include <zlib.h>

#include <map>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/error.h"
#include "profile.pb.h"
#include "report/names.h"

namespace memtrail::report {
namespace {

// Folded lines separate frames with ';' and end with " COUNT".
std::string folded_safe(std::string name) {
  for (char& c : name) {
    if (c == ';') c = ':';
    if (c == '\n') c = ' ';
  }
  return name;
}

// Strings are interned in the profile's table; index 0 is "".
class StringTable {
 public:
  explicit StringTable(perftools::profiles::Profile& profile) : profile_(profile) { index(""); }
  int64_t index(const std::string& text) {
    auto [it, added] = indices_.emplace(text, static_cast<int64_t>(indices_.size()));
    if (added) profile_.add_string_table(text);
    return it->second;
  }

 private:
  perftools::profiles::Profile& profile_;
  std::unordered_map<std::string, int64_t> indices_;
};

std::string gzip(const std::string& data) {
  z_stream stream{};
  // windowBits 15 + 16: a gzip header and trailer, as pprof expects.
  if (deflateInit2(&stream, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    throw Error("gzip the pprof profile: zlib could not start");
  }
  std::string out(deflateBound(&stream, data.size()), '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  int result = deflate(&stream, Z_FINISH);
  deflateEnd(&stream);
  if (result != Z_STREAM_END) throw Error("gzip the pprof profile: zlib failed");
  out.resize(stream.total_out);
  return out;
}

}  // namespace

void render_folded(const model::Report& report, std::ostream& out) {
  for (const auto& site : report.leaks) {
    if (site.outstanding_bytes == 0) continue;
    out << folded_safe(comm_of(report, site.pid));
    for (auto frame = site.stack.rbegin(); frame != site.stack.rend(); ++frame) {
      out << ';' << folded_safe(frame_name(*frame));
    }
    out << ' ' << site.outstanding_bytes << '\n';
  }
}

std::string to_pprof(const model::Report& report, const PprofOptions& options) {
  perftools::profiles::Profile profile;
  StringTable strings(profile);
  for (auto [type, unit] :
       {std::pair{"alloc_objects", "count"}, std::pair{"alloc_space", "bytes"},
        std::pair{"inuse_objects", "count"}, std::pair{"inuse_space", "bytes"}}) {
    auto* sample_type = profile.add_sample_type();
    sample_type->set_type(strings.index(type));
    sample_type->set_unit(strings.index(unit));
  }
  profile.set_default_sample_type(strings.index(options.default_sample_type));
  // Readers name and scale a profile by its period type (Pyroscope needs one).
  auto* period_type = profile.mutable_period_type();
  period_type->set_type(strings.index("space"));
  period_type->set_unit(strings.index("bytes"));
  profile.set_period(report.sample_rate > 0 ? static_cast<int64_t>(report.sample_rate) : 1);
  profile.set_time_nanos(report.start_time_unix_ms * 1'000'000);
  profile.set_duration_nanos(static_cast<int64_t>(report.duration_s * 1e9));

  // Each traced process's mapped files first, in target order: go tool pprof names the first
  // mapping (the first target's executable) as the profile's File. Frames outside them (a
  // Python frame, an address no file maps, a report from before mappings were kept) get a
  // mapping that has only a name.
  std::map<std::tuple<uint32_t, uint64_t, std::string>, uint64_t> mappings;  // (pid, start, path)
  std::map<std::string, uint64_t> named_mappings;                            // module -> id
  auto add_mapping = [&](const std::string& path, uint64_t start, uint64_t limit,
                         uint64_t file_offset) {
    auto* mapping = profile.add_mapping();
    mapping->set_id(static_cast<uint64_t>(profile.mapping_size()));
    mapping->set_memory_start(start);
    mapping->set_memory_limit(limit);
    mapping->set_file_offset(file_offset);
    mapping->set_filename(strings.index(path));
    mapping->set_has_functions(true);
    mapping->set_has_filenames(true);
    mapping->set_has_line_numbers(true);
    mapping->set_has_inline_frames(true);
    return mapping->id();
  };
  std::unordered_map<uint32_t, const model::Target*> target_of;
  for (const auto& target : report.targets) {
    target_of.emplace(target.pid, &target);
    for (const auto& file : target.mappings) {
      auto key = std::tuple{target.pid, file.start, file.path};
      if (!mappings.count(key)) {
        mappings[key] = add_mapping(file.path, file.start, file.limit, file.file_offset);
      }
    }
  }
  auto mapping_id = [&](uint32_t pid, const model::Frame& frame) {
    auto target = target_of.find(pid);
    if (target != target_of.end() && !frame.python) {
      for (const auto& file : target->second->mappings) {
        if (frame.address >= file.start && frame.address < file.limit) {
          return mappings.at(std::tuple{pid, file.start, file.path});
        }
      }
    }
    auto named = named_mappings.find(frame.module);
    if (named != named_mappings.end()) return named->second;
    uint64_t id = add_mapping(frame.module, 0, 0, 0);
    named_mappings.emplace(frame.module, id);
    return id;
  };
  std::map<std::pair<std::string, std::string>, uint64_t> functions;  // (name, file) -> id
  std::map<std::pair<uint32_t, uint64_t>, uint64_t> locations;        // (pid, address) -> id
  auto function_id = [&](const model::Frame& frame) {
    std::string name = frame_name(frame);
    std::string file = frame.file.value_or("");
    auto [it, added] = functions.emplace(std::pair{name, file}, functions.size() + 1);
    if (added) {
      auto* function = profile.add_function();
      function->set_id(it->second);
      function->set_name(strings.index(name));
      function->set_system_name(strings.index(name));
      function->set_filename(strings.index(file));
    }
    return it->second;
  };

  // Sites that freed everything count in alloc_objects and alloc_space, with 0 in use.
  std::vector<const model::LeakSite*> sites;
  for (const auto& site : report.leaks) sites.push_back(&site);
  for (const auto& site : report.freed_sites) sites.push_back(&site);
  for (const auto* site_pointer : sites) {
    const model::LeakSite& site = *site_pointer;
    auto* sample = profile.add_sample();
    // Frames of one address (inlined functions, then the function they are in) make one
    // location with several lines, innermost first, as pprof orders them.
    for (size_t i = 0; i < site.stack.size();) {
      size_t end = i;
      while (end < site.stack.size() && site.stack[end].address == site.stack[i].address &&
             site.stack[end].inlined) {
        ++end;
      }
      if (end < site.stack.size() && site.stack[end].address == site.stack[i].address) ++end;
      if (end == i) end = i + 1;
      auto key = std::pair{site.pid, site.stack[i].address};
      auto [it, added] = locations.emplace(key, locations.size() + 1);
      if (added) {
        auto* location = profile.add_location();
        location->set_id(it->second);
        location->set_mapping_id(mapping_id(site.pid, site.stack[i]));
        location->set_address(site.stack[i].address);
        for (size_t j = i; j < end; ++j) {
          auto* line = location->add_line();
          line->set_function_id(function_id(site.stack[j]));
          line->set_line(site.stack[j].line.value_or(0));
        }
      }
      sample->add_location_id(it->second);
      i = end;
    }
    for (uint64_t value : {site.total_allocations, site.total_allocated_bytes,
                           site.outstanding_allocations, site.outstanding_bytes}) {
      sample->add_value(static_cast<int64_t>(value));
    }
    auto* pid = sample->add_label();
    pid->set_key(strings.index("pid"));
    pid->set_num(site.pid);
    if (!site.kind.empty()) {  // python_objects or native: `-tagfocus kind=python_objects`
      auto* kind = sample->add_label();
      kind->set_key(strings.index("kind"));
      kind->set_str(strings.index(site.kind));
    }
    if (site.sized_by_estimate()) {
      // Its bytes hold Python objects of a type sized by estimate (PythonType::sizing):
      // `-tagignore sizing=estimated` keeps the sites whose bytes are sys.getsizeof's.
      auto* sizing = sample->add_label();
      sizing->set_key(strings.index("sizing"));
      sizing->set_str(strings.index(model::PythonType::kSizingEstimated));
    }
    if (site.growth) {
      auto* verdict = sample->add_label();
      verdict->set_key(strings.index("verdict"));
      verdict->set_str(strings.index(site.growth->verdict));
    }
    for (const auto& [key, value] : options.labels) {
      if (value.empty()) continue;
      auto* label = sample->add_label();
      label->set_key(strings.index(key));
      label->set_str(strings.index(value));
    }
    if (site.suppressed) {
      auto* suppressed = sample->add_label();
      suppressed->set_key(strings.index("suppressed"));
      suppressed->set_str(strings.index(*site.suppressed));
    }
  }
  if (report.freed_omitted.sites > 0) {
    profile.add_comment(strings.index(
        std::to_string(report.freed_omitted.sites) + " more sites freed all they allocated (" +
        std::string(report.freed_omitted.estimated ? "~" : "") +
        std::to_string(report.freed_omitted.bytes) + " bytes in " +
        std::string(report.freed_omitted.estimated ? "~" : "") +
        std::to_string(report.freed_omitted.allocations) + " allocations" +
        (report.freed_omitted.estimated ? ", estimates: Python objects seen part of the time"
                                        : "") +
        "): not in alloc_objects/alloc_space"));
  }
  std::string serialized;
  if (!profile.SerializeToString(&serialized)) throw Error("encode the pprof profile");
  return gzip(serialized);
}

std::string gunzip(const std::string& compressed) {
  z_stream stream{};
  if (inflateInit2(&stream, 15 + 32) != Z_OK) throw Error("gunzip: zlib could not start");
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[1 << 16];
  int result = Z_OK;
  while (result == Z_OK) {
    stream.next_out = reinterpret_cast<Bytef*>(buffer);
    stream.avail_out = sizeof(buffer);
    result = inflate(&stream, Z_NO_FLUSH);
    out.append(buffer, sizeof(buffer) - stream.avail_out);
  }
  inflateEnd(&stream);
  if (result != Z_STREAM_END) throw Error("gunzip: not gzip data, or truncated");
  return out;
}

}  // namespace memtrail::report
