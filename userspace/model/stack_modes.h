// SPDX-License-Identifier: Apache-2.0
// How stacks are walked (--unwind) and what CPython stacks show (--python-frames): parsed once
// by cli/, used by unwind/, python/ and the session, with no library linked for them.
#pragma once

#include <optional>
#include <string_view>

namespace memtrail::model {

// --unwind: how the BPF walker unwinds each frame.
enum class UnwindMode {
  kFramePointers,  // fp: the frame-pointer walk everywhere, no table
  kDwarf,          // dwarf: CFI tables for every module that has CFI; nothing is guessed
  kAuto,           // auto: tables for modules built without frame pointers
};

inline std::optional<UnwindMode> parse_unwind_mode(std::string_view name) {
  if (name == "fp") return UnwindMode::kFramePointers;
  if (name == "dwarf") return UnwindMode::kDwarf;
  if (name == "auto") return UnwindMode::kAuto;
  return std::nullopt;
}

// The --unwind name of `mode` (the report's unwind.mode).
inline const char* unwind_mode_name(UnwindMode mode) {
  switch (mode) {
    case UnwindMode::kFramePointers:
      return "fp";
    case UnwindMode::kDwarf:
      return "dwarf";
    case UnwindMode::kAuto:
      return "auto";
  }
  return "?";
}

// --python-frames: what a CPython process's stacks show.
enum class PythonFramesMode {
  kNative,  // the interpreter's own C frames only (no Python walk: costs nothing)
  kPython,  // Python frames only (native ones where no Python frame was found)
  kMixed,   // Python frames in place of the eval loop's, between the native frames of C code
};

inline std::optional<PythonFramesMode> parse_python_frames_mode(std::string_view text) {
  if (text == "native") return PythonFramesMode::kNative;
  if (text == "python") return PythonFramesMode::kPython;
  if (text == "mixed") return PythonFramesMode::kMixed;
  return std::nullopt;
}

}  // namespace memtrail::model
