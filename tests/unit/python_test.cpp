// SPDX-License-Identifier: Apache-2.0
// The CPython layout memtrail was built with, checked against the installed interpreter: what
// Debian's /usr/bin/python3 says of its thread state, frames and code objects is read again
// from outside, with memtrail's offsets, as the BPF walker and the report do. No BPF here.
#include <gtest/gtest.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "inspect/proc_maps.h"
#include "python/cpython.h"
#include "python/objects.h"
#include "symbolizer/symbolizer.h"

namespace memtrail::python {
namespace {

const char* kPython = "/usr/bin/python3";
const std::string kFixture =
    std::string(MEMTRAIL_SOURCE_DIR) + "/tests/unit/fixtures/python_frames.py";

// The fixture, running: its first line of output, and its pid. Closing stdin lets it end.
class Fixture {
 public:
  explicit Fixture(const std::string& script = kFixture) {
    int to_child[2], from_child[2];
    if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(to_child[0], 0);
      ::dup2(from_child[1], 1);
      ::close(to_child[1]);
      ::close(from_child[0]);
      ::execl(kPython, kPython, script.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    input_ = to_child[1];
    FILE* output = ::fdopen(from_child[0], "r");
    char* line = nullptr;
    size_t capacity = 0;
    if (output && ::getline(&line, &capacity, output) > 0) report_ = nlohmann::json::parse(line);
    std::free(line);
    if (output) std::fclose(output);
    wait_until_blocked_in_read();
  }
  ~Fixture() {
    if (input_ >= 0) ::close(input_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  const nlohmann::json& report() const { return report_; }

 private:
  // The fixture prints its line and then reaches `sys.stdin.read()`: until it sits in read(2)
  // its frame may still point at the print. /proc/PID/syscall names the system call a blocked
  // task is in (0: read on x86-64). At most 5 s; a test then fails on the frame it reads.
  void wait_until_blocked_in_read() const {
    if (pid_ <= 0) return;
    for (int attempt = 0; attempt < 500; ++attempt) {
      std::ifstream syscall_file("/proc/" + std::to_string(pid_) + "/syscall");
      std::string number;
      if (syscall_file >> number && number == "0") return;
      ::usleep(10'000);
    }
  }

  pid_t pid_ = -1;
  int input_ = -1;
  nlohmann::json report_;
};

uint64_t read_u64(pid_t pid, uint64_t address) {
  uint64_t value = 0;
  iovec local{&value, sizeof(value)}, remote{reinterpret_cast<void*>(address), sizeof(value)};
  EXPECT_EQ(::process_vm_readv(pid, &local, 1, &remote, 1, 0), 8) << "at 0x" << std::hex << address;
  return value;
}

uint8_t read_u8(pid_t pid, uint64_t address) {
  uint8_t value = 0;
  iovec local{&value, 1}, remote{reinterpret_cast<void*>(address), 1};
  EXPECT_EQ(::process_vm_readv(pid, &local, 1, &remote, 1, 0), 1);
  return value;
}

std::string unhex(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return bytes;
}

// The line of the fixture that carries `marker` in a comment.
uint32_t fixture_line(const std::string& marker) {
  std::ifstream file(kFixture);
  std::string text;
  for (uint32_t number = 1; std::getline(file, text); ++number) {
    if (text.find("# line: " + marker) != std::string::npos) return number;
  }
  return 0;
}

TEST(Python, LayoutIsTheInstalledInterpreters) {
  Fixture fixture;
  ASSERT_FALSE(fixture.report().is_null()) << kPython << " did not run the fixture";
  auto mappings = inspect::read_proc_maps(static_cast<uint32_t>(fixture.pid()));
  ASSERT_TRUE(mappings);
  auto interpreter = find_interpreter(static_cast<uint32_t>(fixture.pid()), *mappings);
  ASSERT_TRUE(interpreter) << "no _PyRuntime found in " << kPython << "'s mappings";
  EXPECT_TRUE(interpreter->supported) << interpreter->reason;
  EXPECT_EQ(interpreter->version.substr(0, 5), "3.11.");
  const auto& layout = built_layout();
  const auto& walker = layout.walker;
  // A str's header read at once reaches its caches; the header of every other object's read
  // holds what their sizes need (a dict's keys pointer).
  EXPECT_EQ(kStrHeaderBytes, layout.compact_data);
  EXPECT_EQ(kUnicodeObjectBytes, layout.unicode_object_size);
  EXPECT_GE(kObjectHeaderBytes, layout.dict_keys + sizeof(uint64_t));
  // OrderedDict's __sizeof__ was read from its code (python/sizeof_code.h).
  EXPECT_NE(interpreter->odict_type_address, 0u);
  EXPECT_TRUE(interpreter->odict_sizing) << interpreter->odict_reason;
  pid_t pid = fixture.pid();
  const auto& report = fixture.report();

  // The main thread blocks in read() without the GIL: the walker finds its state in the
  // interpreter's list, by the pthread id, as for any thread not holding the GIL.
  uint64_t interp = read_u64(pid, interpreter->runtime_address + walker.runtime_interp_main);
  uint64_t tstate = read_u64(pid, interp + walker.interp_threads_head);
  EXPECT_EQ(tstate, report["tstate"].get<uint64_t>());
  EXPECT_EQ(read_u64(pid, tstate + walker.tstate_thread_id), report["thread_id"].get<uint64_t>());
  EXPECT_EQ(read_u64(pid, tstate + walker.tstate_next), 0u);  // the only thread

  // The frame chain: inner, outer, <module>; only <module> begins an eval-loop call.
  uint64_t cframe = read_u64(pid, tstate + walker.tstate_cframe);
  uint64_t frame = read_u64(pid, cframe + walker.cframe_current_frame);
  const char* keys[] = {"inner_code", "outer_code", "module_code"};
  const bool entries[] = {false, false, true};
  std::vector<model::Frame> named;
  CodeReader reader;
  for (int i = 0; i < 3; ++i) {
    ASSERT_NE(frame, 0u) << "frame " << i;
    uint64_t code = read_u64(pid, frame + walker.frame_code);
    EXPECT_EQ(code, report[keys[i]].get<uint64_t>()) << keys[i];
    EXPECT_EQ(read_u8(pid, frame + walker.frame_is_entry) != 0, entries[i]) << keys[i];
    uint64_t prev_instr = read_u64(pid, frame + walker.frame_prev_instr);
    ASSERT_GE(prev_instr, code + walker.code_adaptive);
    // All three run in the fixture's module: its dict is each frame's f_globals.
    uint64_t globals = read_u64(pid, frame + walker.frame_globals);
    EXPECT_EQ(globals, report["globals"].get<uint64_t>()) << keys[i];
    model::PythonFrame recorded{
        code, static_cast<uint32_t>((prev_instr - code - walker.code_adaptive) / 2), entries[i],
        globals};
    named.push_back(reader.frame(static_cast<uint32_t>(pid), *interpreter, recorded));
    frame = read_u64(pid, frame + walker.frame_previous);
  }
  EXPECT_EQ(frame, 0u) << "frames beyond <module>";
  EXPECT_EQ(named[0].function, "inner");
  EXPECT_EQ(named[1].function, "outer");
  EXPECT_EQ(named[2].function, "<module>");
  for (const auto& frame_named : named) {
    EXPECT_TRUE(frame_named.python);
    EXPECT_EQ(frame_named.file, report["file"].get<std::string>());
  }
  EXPECT_EQ(named[0].line, fixture_line("blocked"));
  EXPECT_GT(named[2].line.value_or(0), named[1].line.value_or(0));  // outer() is called last

  // What cannot be the code that ran is said so, not named after what lies there now: an
  // instruction beyond inner's bytecode (its code freed, a shorter one in its place), or an
  // object that is not code (here the dict type).
  auto inner_code = report["inner_code"].get<uint64_t>();
  auto globals = report["globals"].get<uint64_t>();
  auto beyond = reader.frame(static_cast<uint32_t>(pid), *interpreter,
                             {inner_code, model::kPythonLastiSaturated - 1, false, globals});
  EXPECT_EQ(beyond.function, CodeReader::kGoneCode);
  auto not_code = reader.frame(static_cast<uint32_t>(pid), *interpreter,
                               {report["dict_type"].get<uint64_t>(), 0, false, globals});
  EXPECT_EQ(not_code.function, CodeReader::kGoneCode);
  // The same code run with another module's dict (exec) is read and named again, alike.
  auto elsewhere =
      reader.frame(static_cast<uint32_t>(pid), *interpreter, {inner_code, 0, false, globals + 64});
  EXPECT_EQ(elsewhere.function, "inner");
}

TEST(Python, LineTableDecodingAgreesWithCoLines) {
  Fixture fixture;
  ASSERT_FALSE(fixture.report().is_null());
  size_t checked = 0;
  for (const auto& table : fixture.report()["tables"]) {
    std::string bytes = unhex(table["table"].get<std::string>());
    int first = table["first"].get<int>();
    const auto& lines = table["lines"];
    for (size_t unit = 0; unit < lines.size(); ++unit) {
      auto decoded = line_of(bytes, first, static_cast<uint32_t>(unit));
      if (lines[unit].is_null()) {
        EXPECT_FALSE(decoded) << table["name"] << " unit " << unit;
      } else {
        EXPECT_EQ(decoded, lines[unit].get<uint32_t>()) << table["name"] << " unit " << unit;
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 100u);
}

// The CPython runtime of live process `pid`, as memtrail finds it from its mappings.
std::optional<Interpreter> interpreter_of(uint32_t pid) {
  auto mappings = inspect::read_proc_maps(pid);
  if (!mappings) return std::nullopt;
  return find_interpreter(pid, *mappings);
}

// The native walk of a Python stack ends at its outermost frame in [eval_loop_start,
// eval_loop_end) (bpf/alloc/sites.bpf.h), and mix_frames() puts Python frames in place of the
// frames the symbolizer names _PyEval_EvalFrameDefault: both must be the same code. Its first
// and last bytes are named so, the bytes just outside it are not.
TEST(Python, EvalLoopRangeIsTheCodeTheMergeReplaces) {
  Fixture fixture;
  ASSERT_FALSE(fixture.report().is_null()) << kPython << " did not run the fixture";
  auto pid = static_cast<uint32_t>(fixture.pid());
  auto interpreter = interpreter_of(pid);
  ASSERT_TRUE(interpreter);
  uint64_t start = interpreter->eval_loop_start, end = interpreter->eval_loop_end;
  ASSERT_NE(start, 0u) << "_PyEval_EvalFrameDefault not found in " << interpreter->module;
  ASSERT_GT(end, start + 4096) << "the eval loop is one large function";
  auto mappings = inspect::read_proc_maps(pid);
  ASSERT_TRUE(mappings);
  symbolizer::Symbolizer symbolizer;
  symbolizer.set_process_mappings(pid, *mappings);
  auto function_at = [&](uint64_t address) {
    auto frames = symbolizer.symbolize(pid, address, false);
    return frames.empty() ? std::string("(none)") : frames.back().function.value_or("??");
  };
  EXPECT_EQ(function_at(start), "_PyEval_EvalFrameDefault");
  EXPECT_EQ(function_at(start + (end - start) / 2), "_PyEval_EvalFrameDefault");
  EXPECT_EQ(function_at(end - 1), "_PyEval_EvalFrameDefault");
  EXPECT_NE(function_at(start - 1), "_PyEval_EvalFrameDefault");
  EXPECT_NE(function_at(end), "_PyEval_EvalFrameDefault");
}

TEST(Python, TypeTrackerNamesTypesAndSizesThemFromTheLiveProcess) {
  Fixture fixture;
  ASSERT_FALSE(fixture.report().is_null());
  auto pid = static_cast<uint32_t>(fixture.pid());
  auto interpreter = interpreter_of(pid);
  ASSERT_TRUE(interpreter);
  EXPECT_EQ(interpreter->object_probes.size(), 4u) << interpreter->types_reason;
  std::unordered_map<uint32_t, Interpreter> interpreters{{pid, *interpreter}};
  const auto& report = fixture.report();
  uint64_t dict_type = report["dict_type"].get<uint64_t>();
  uint64_t plain_type = report["plain_type"].get<uint64_t>();
  TypeTracker tracker;
  // Counts as the kernel keeps them: running totals, read at t = 0, 1 and 2 s.
  tracker.record(0, {{pid, dict_type, 10, 4, 0, 0}, {pid, plain_type, 5, 5, 0, 0}}, interpreters);
  tracker.record(1, {{pid, dict_type, 20, 4, 0, 0}, {pid, plain_type, 6, 5, 0, 0}}, interpreters);
  tracker.record(2, {{pid, dict_type, 30, 4, 0, 0}, {pid, plain_type, 7, 5, 0, 0}}, interpreters);
  auto types = tracker.report();
  ASSERT_EQ(types.size(), 2u);
  EXPECT_EQ(types[0].type, "dict");  // fastest growing first
  EXPECT_EQ(types[0].outstanding_objects, 26);
  EXPECT_EQ(types[0].outstanding_bytes, 26 * report["dict_size"].get<int64_t>());
  EXPECT_NEAR(types[0].growth_objects_per_s, 10.0, 1e-9);
  EXPECT_EQ(types[1].type, "Plain");
  EXPECT_EQ(types[1].outstanding_objects, 2);
  EXPECT_EQ(types[1].outstanding_bytes, 2 * report["plain_size"].get<int64_t>());
  EXPECT_NEAR(types[1].growth_objects_per_s, 1.0, 1e-9);
  EXPECT_EQ(types[1].made, 7u);
  EXPECT_EQ(types[1].freed, 5u);
}

// tests/unit/fixtures/python_sizes.py running: the objects it listed (address and type each,
// as the tracer records them), and its interpreter, for ObjectLiveness to judge them.
struct LiveSizes {
  Fixture fixture{std::string(MEMTRAIL_SOURCE_DIR) + "/tests/unit/fixtures/python_sizes.py"};
  uint32_t pid = static_cast<uint32_t>(fixture.pid());
  std::unordered_map<uint32_t, Interpreter> interpreters;
  std::vector<model::TrackedPythonObject> objects;

  // False when the fixture listed nothing or its interpreter was not found.
  bool ready() {
    if (!fixture.report().is_array()) return false;
    auto interpreter = interpreter_of(pid);
    if (!interpreter) return false;
    interpreters.emplace(pid, *interpreter);
    for (const auto& entry : fixture.report()) {
      model::TrackedPythonObject object;
      object.pid = pid;
      object.address = entry["address"].get<uint64_t>();
      object.type = entry["type"].get<uint64_t>();
      objects.push_back(object);
    }
    return true;
  }
};

// sys.getsizeof as memtrail computes it from outside, for the common types: each object's
// size as the interpreter reports it, less a separate buffer over 512 bytes (malloc's: counted
// at malloc's site).
TEST(Python, ObjectSizesAreSysGetsizeofs) {
  LiveSizes sizes;
  ASSERT_TRUE(sizes.ready());
  const Fixture& fixture = sizes.fixture;
  uint32_t pid = sizes.pid;
  ObjectLiveness liveness(sizes.interpreters);
  std::vector<model::TrackedPythonObject>& objects = sizes.objects;
  liveness.judge(objects);
  size_t with_malloc_buffer = 0;
  std::set<std::string> estimated;
  for (size_t i = 0; i < objects.size(); ++i) {
    const auto& entry = fixture.report()[i];
    std::string name = entry["name"].get<std::string>();
    auto size = entry["getsizeof"].get<uint64_t>();
    auto buffer = entry["buffer"].get<uint64_t>();
    uint64_t malloc_bytes = entry.contains("malloc") ? entry["malloc"].get<uint64_t>()
                            : buffer > 512           ? buffer
                                                     : 0;
    uint64_t expected = size - malloc_bytes;
    with_malloc_buffer += malloc_bytes > 0;
    EXPECT_TRUE(objects[i].alive) << name;
    // Exact exactly for the types not sized by estimate (a deque's too: its __sizeof__'s code,
    // read from the process, adds only its blocks, malloc's).
    EXPECT_EQ(liveness.sized_exactly(pid, objects[i].type), !name.starts_with("estimated_"))
        << name;
    if (name.starts_with("estimated_")) {
      // Its type's name is the note's: the last part of tp_name is its __name__.
      std::string type_name = liveness.type_name(pid, objects[i].type);
      estimated.insert(type_name.substr(type_name.rfind('.') + 1));
      continue;
    }
    EXPECT_EQ(objects[i].size, expected)
        << name << ": sys.getsizeof " << size << ", buffer " << buffer;
    bool big = name.ends_with("_big");
    EXPECT_EQ(objects[i].pymalloc, !big) << name;
    // A block behind a GC header stays malloc's; one that starts at the object is the object's.
    EXPECT_EQ(objects[i].block_at_object,
              name == "bytes_big" || name.starts_with("int") || name.starts_with("float") ||
                  name.starts_with("str") || name == "bytes" || name.starts_with("bytearray"))
        << name;
    EXPECT_EQ(liveness.type_name(pid, objects[i].type), entry["type_name"].get<std::string>())
        << name;
  }
  // list_long, dict_large, dict_deleted, set_large, set_shrunk, str_utf8_long, odict_large,
  // deque_empty, deque_long, deque_subclass
  EXPECT_EQ(with_malloc_buffer, 10u);
  // The types sized by estimate are those, and only those, whose __sizeof__ memtrail does not
  // compute: array.array (its items), a class defining __sizeof__ in Python, a dict subclass
  // whose MRO finds a mixin's __sizeof__ before dict's.
  EXPECT_EQ(estimated, (std::set<std::string>{"array", "Sized", "MixedDict"}));
  std::set<std::string> said;
  for (const auto& said_type : liveness.estimated_types(pid)) {
    // "array.array (its __sizeof__: why)": the name, then why when its code was read.
    std::string name = said_type.substr(0, said_type.find(' '));
    said.insert(name.substr(name.rfind('.') + 1));
  }
  EXPECT_EQ(said, estimated);
}

// A type's sizes are exact when its __sizeof__ is the one its sizing computes: a dict
// subclass's is dict's, an int subclass's int's, a str subclass's str's; a sizing that is not
// its __sizeof__'s is an estimate (another C __sizeof__, a deque's, is read from its code:
// sizeof_code_test, and ObjectSizesAreSysGetsizeofs for the installed interpreter's).
TEST(Python, SizeofOwnersMatchTheirSizings) {
  EXPECT_TRUE(sizeof_matches("PyUnicode_Type", Sizing::kStr));
  EXPECT_TRUE(sizeof_matches("PyBaseObject_Type", Sizing::kBasic));
  EXPECT_TRUE(sizeof_matches("PyDict_Type", Sizing::kDict));
  EXPECT_TRUE(sizeof_matches("PyODict_Type", Sizing::kOrderedDict));
  EXPECT_TRUE(sizeof_matches("PyLong_Type", Sizing::kInt));
  EXPECT_TRUE(sizeof_matches("PySet_Type", Sizing::kSet));
  EXPECT_FALSE(sizeof_matches("PyUnicode_Type", Sizing::kBasic));
  // OrderedDict's own __sizeof__ was not read: sized as the dict it is, an estimate.
  EXPECT_FALSE(sizeof_matches("PyODict_Type", Sizing::kDict));
  EXPECT_FALSE(sizeof_matches("", Sizing::kBasic));
}

// What tells an object from another of its type made later at its address, read from a live
// process: the content of exact strs, bytes, ints, floats and tuples, a dict's version (also a
// subclass's), nothing for lists, sets, instances and subclasses of the immutable types; the
// same when read again; and the identity of two objects of one type and size but other
// content differs.
TEST(Python, ObjectIdentitiesAreContentOrVersionAndStable) {
  LiveSizes sizes;
  ASSERT_TRUE(sizes.ready());
  const Fixture& fixture = sizes.fixture;
  ObjectLiveness liveness(sizes.interpreters);
  liveness.set_read_identities(true);
  std::vector<model::TrackedPythonObject>& objects = sizes.objects;
  std::vector<std::string> names;
  for (const auto& entry : fixture.report()) names.push_back(entry["name"].get<std::string>());
  auto again = objects;
  liveness.judge(objects);
  liveness.judge(again);
  std::map<std::string, uint64_t> content;
  for (size_t i = 0; i < objects.size(); ++i) {
    const std::string& name = names[i];
    bool big = name.ends_with("_big");  // malloc's: over what pymalloc serves, not identified
    auto expected = model::ObjectIdentity::kNone;
    if (!big && (name.starts_with("int") || name == "float" || name.starts_with("str") ||
                 name == "bytes" || name == "tuple")) {
      expected = model::ObjectIdentity::kContent;
      content[name] = objects[i].identity;
    } else if (name.starts_with("dict") || name.starts_with("odict") ||
               name == "estimated_mixin_sizeof") {  // a dict subclass too
      expected = model::ObjectIdentity::kVersion;
      EXPECT_GT(objects[i].identity, 0u) << name;
    }
    ASSERT_TRUE(objects[i].alive) << name;
    EXPECT_EQ(objects[i].identity_kind, expected) << name;
    EXPECT_EQ(again[i].identity_kind, expected) << name;
    EXPECT_EQ(again[i].identity, objects[i].identity) << name;
  }
  ASSERT_GE(content.size(), 7u);
  EXPECT_NE(content["int_small"], content["int_large"]);
  EXPECT_NE(content["int_large"], content["int_negative"]);
}

// The identity of a str is its length, kind and characters, not what CPython caches in it
// later (its hash, its interned state); a tuple whose items are not all set yet has none.
TEST(Python, ContentIdentitiesIgnoreCachesAndWaitForCompleteTuples) {
  const auto& layout = built_layout();
  TypeFacts str;
  str.identity = IdentityBy::kStr;
  std::vector<uint8_t> text(layout.ascii_data + 8, 0);
  auto put = [](std::vector<uint8_t>& raw, size_t offset, auto value) {
    std::memcpy(raw.data() + offset, &value, sizeof(value));
  };
  put(text, layout.unicode_length, int64_t{7});
  uint32_t state = (1u << layout.state_kind_shift) | (1u << layout.state_compact_bit) |
                   (1u << layout.state_ascii_bit);
  put(text, layout.unicode_state, state);
  std::memcpy(text.data() + layout.ascii_data, "abcdefg", 8);
  ASSERT_EQ(identity_bytes(str, text), layout.ascii_data + 7);
  auto [kind, first] = object_identity(str, text);
  EXPECT_EQ(kind, model::ObjectIdentity::kContent);
  auto cached = text;
  put(cached, layout.unicode_length + 8, int64_t{0x1234567});  // the hash, once computed
  put(cached, layout.unicode_state, state | 1u);               // interned
  EXPECT_EQ(object_identity(str, cached).second, first);
  auto other = text;
  other[layout.ascii_data + 6] = 'h';
  EXPECT_NE(object_identity(str, other).second, first);

  TypeFacts tuple;
  tuple.identity = IdentityBy::kFields;
  tuple.tuple = true;
  tuple.basic_size = 24;
  tuple.item_size = 8;
  std::vector<uint8_t> items(24 + 2 * 8, 0);
  put(items, layout.var_size, int64_t{2});
  put(items, 24, uint64_t{0x7f0000001000});
  EXPECT_EQ(object_identity(tuple, items).first, model::ObjectIdentity::kNone);
  put(items, 32, uint64_t{0x7f0000002000});
  EXPECT_EQ(object_identity(tuple, items).first, model::ObjectIdentity::kContent);

  // A str read before its creator wrote its characters (the probe fires before): its header is
  // complete, so its content passes for an identity, one its finished content does not match.
  // Taken then, a later read would find "another object" at the address and remove a live one:
  // what model::settled_identity keeps from happening by not taking young objects' content.
  auto unwritten = text;
  std::memset(unwritten.data() + layout.ascii_data, 0, 7);
  auto [unwritten_kind, unwritten_digest] = object_identity(str, unwritten);
  EXPECT_EQ(unwritten_kind, model::ObjectIdentity::kContent);
  EXPECT_NE(unwritten_digest, first);
}

// Content is an identity only for an object at least kIdentitySettleNs old when the reads of
// its memory began; younger, or made while they ran, it is not proved (kNone), whatever its kind.
TEST(Python, AYoungObjectsContentIsNotItsIdentityYet) {
  using model::ObjectIdentity;
  using model::settled_identity;
  constexpr uint64_t kCreated = 5'000'000'000;
  constexpr uint64_t kSettle = model::kIdentitySettleNs;
  EXPECT_EQ(kSettle, 2'000'000u);
  for (auto kind : {ObjectIdentity::kContent, ObjectIdentity::kVersion}) {
    EXPECT_EQ(settled_identity(kind, kCreated, kCreated), ObjectIdentity::kNone);
    EXPECT_EQ(settled_identity(kind, kCreated, kCreated + kSettle - 1), ObjectIdentity::kNone);
    EXPECT_EQ(settled_identity(kind, kCreated, kCreated + kSettle), kind);
    EXPECT_EQ(settled_identity(kind, kCreated, kCreated + 60 * kSettle), kind);
    // Created after the reads began (a clock read before the creation): young.
    EXPECT_EQ(settled_identity(kind, kCreated, kCreated - 1), ObjectIdentity::kNone);
  }
  EXPECT_EQ(settled_identity(ObjectIdentity::kNone, kCreated, kCreated + kSettle),
            ObjectIdentity::kNone);
}

// The liveness read: thousands of live objects of many types, read from the running process
// (page by page), each alive with sys.getsizeof's size; an object recorded with another type,
// or at an address the process does not map, is dead.
TEST(Python, ObjectLivenessFindsLiveObjectsAndTheirSizes) {
  Fixture fixture;
  ASSERT_FALSE(fixture.report().is_null());
  auto pid = static_cast<uint32_t>(fixture.pid());
  auto interpreter = interpreter_of(pid);
  ASSERT_TRUE(interpreter);
  std::unordered_map<uint32_t, Interpreter> interpreters{{pid, *interpreter}};
  ObjectLiveness liveness(interpreters);
  const auto& kept = fixture.report()["kept"];
  ASSERT_GT(kept.size(), 5000u);
  std::vector<model::TrackedPythonObject> objects;
  for (const auto& object : kept) {
    model::TrackedPythonObject tracked;
    tracked.pid = pid;
    tracked.address = object[0].get<uint64_t>();
    tracked.type = object[1].get<uint64_t>();
    objects.push_back(tracked);
  }
  size_t live = objects.size();
  auto wrong_type = objects[0];
  wrong_type.type = objects[600].type;  // a Plain said to be a str
  objects.push_back(wrong_type);
  auto unmapped = objects[1];
  unmapped.address = 0x1000;  // never mapped
  objects.push_back(unmapped);
  std::reverse(objects.begin(), objects.end());  // any order
  liveness.judge(objects);
  std::reverse(objects.begin(), objects.end());
  size_t large = 0;
  for (size_t i = 0; i < live; ++i) {
    ASSERT_TRUE(objects[i].alive) << i << ": " << kept[i].dump();
    EXPECT_EQ(objects[i].size, kept[i][2].get<uint64_t>()) << i << ": " << kept[i].dump();
    EXPECT_EQ(objects[i].pymalloc, objects[i].size <= 512) << i;
    large += objects[i].pymalloc ? 0 : 1;
  }
  EXPECT_GT(large, 0u);  // the long bytes: malloc's
  EXPECT_FALSE(objects[live].alive);
  EXPECT_FALSE(objects[live + 1].alive);
  EXPECT_EQ(liveness.type_name(pid, objects[0].type), "Plain");
}

model::Frame native(const std::string& function, const std::string& module) {
  model::Frame frame;
  frame.function = function;
  frame.module = module;
  return frame;
}

model::Frame python_frame(const std::string& function) {
  model::Frame frame;
  frame.function = function;
  frame.module = "[python]";
  frame.python = true;
  return frame;
}

std::vector<std::string> names(const std::vector<model::Frame>& frames) {
  std::vector<std::string> out;
  for (const auto& frame : frames) out.push_back(frame.function.value_or("??"));
  return out;
}

TEST(Python, MixedFramesReplaceTheEvalLoopsAndDropPlumbing) {
  const std::string exe = "/usr/bin/python3.11";
  // malloc <- ffi_call (libffi) <- _ctypes <- call plumbing <- eval loop (runs leak_native and
  // its callers, down to run) <- plumbing <- eval loop (runs <module>) <- main <- libc start.
  std::vector<model::Frame> stack = {native("ffi_call", "/usr/lib/libffi.so.8"),
                                     native("PyCFuncPtr_call", "/usr/lib/_ctypes.so"),
                                     native("_PyObject_MakeTpCall", exe),
                                     native("_PyEval_EvalFrameDefault", exe),
                                     native("_PyObject_Call", exe),
                                     native("_PyEval_EvalFrameDefault", exe),
                                     native("Py_RunMain", exe),
                                     native("__libc_start_main", "/lib/libc.so.6")};
  std::vector<model::Frame> python = {python_frame("leak_native"), python_frame("Worker.step"),
                                      python_frame("run"), python_frame("<module>")};
  std::vector<bool> entries = {false, false, true, true};
  EXPECT_EQ(names(mix_frames(stack, python, entries, exe, FramesMode::kMixed)),
            (std::vector<std::string>{"ffi_call", "PyCFuncPtr_call", "_PyObject_MakeTpCall",
                                      "leak_native", "Worker.step", "run", "<module>",
                                      "__libc_start_main"}));
  EXPECT_EQ(names(mix_frames(stack, python, entries, exe, FramesMode::kPython)),
            (std::vector<std::string>{"leak_native", "Worker.step", "run", "<module>"}));
  EXPECT_EQ(names(mix_frames(stack, python, entries, exe, FramesMode::kNative)), names(stack));
  // The native walk stopped before the outer eval loop: its Python frames come last.
  std::vector<model::Frame> cut(stack.begin(), stack.begin() + 4);
  EXPECT_EQ(names(mix_frames(cut, python, entries, exe, FramesMode::kMixed)),
            (std::vector<std::string>{"ffi_call", "PyCFuncPtr_call", "_PyObject_MakeTpCall",
                                      "leak_native", "Worker.step", "run", "<module>"}));
  // No Python frame recorded (a thread without a thread state): the native stack as it is.
  EXPECT_EQ(names(mix_frames(stack, {}, {}, exe, FramesMode::kPython)), names(stack));
}

TEST(Python, FramesModeParses) {
  EXPECT_EQ(model::parse_python_frames_mode("mixed"), FramesMode::kMixed);
  EXPECT_EQ(model::parse_python_frames_mode("python"), FramesMode::kPython);
  EXPECT_EQ(model::parse_python_frames_mode("native"), FramesMode::kNative);
  EXPECT_FALSE(model::parse_python_frames_mode("both"));
}

}  // namespace
}  // namespace memtrail::python
