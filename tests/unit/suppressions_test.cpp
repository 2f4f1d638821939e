// SPDX-License-Identifier: Apache-2.0
// Suppressions: built-in ones for memory runtimes keep on purpose, and the user's file.
#include "assemble/suppressions.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/error.h"

namespace memtrail::assemble {
namespace {

model::Frame frame(std::string function, std::string module) {
  model::Frame result;
  result.function = std::move(function);
  result.module = std::move(module);
  return result;
}

const std::string kLibc = "/usr/lib/x86_64-linux-gnu/libc.so.6";

TEST(Suppressions, BuiltInsNameTheStdioBufferTheEmergencyPoolAndLoaderTls) {
  auto builtin = Suppressions::builtin();
  EXPECT_EQ(builtin.match({frame("__GI__IO_file_doallocate", kLibc), frame("main", "/bin/x")}),
            "glibc stdio buffer");
  EXPECT_EQ(builtin.match({frame("(anonymous namespace)::pool::pool()",
                                 "/usr/lib/x86_64-linux-gnu/libstdc++.so.6")}),
            "libstdc++ emergency exception pool");
  EXPECT_EQ(
      builtin.match({frame("calloc", kLibc), frame("allocate_dtv", "/lib64/ld-linux-x86-64.so.2")}),
      "dynamic loader TLS");
}

TEST(Suppressions, TheModuleMustMatchToo) {
  auto builtin = Suppressions::builtin();
  // A program's own pool::pool is not libstdc++'s emergency pool.
  EXPECT_FALSE(builtin.match({frame("my::pool::pool()", "/srv/server")}));
  EXPECT_FALSE(builtin.match({frame("leak_here", "/srv/server"), frame("main", "/srv/server")}));
  EXPECT_FALSE(builtin.match({}));
}

std::string write_file(const std::string& text) {
  char path[] = "/tmp/memtrail-suppressions-XXXXXX";
  int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  std::ofstream(path) << text;
  close(fd);
  return path;
}

TEST(Suppressions, AFileAddsGlobsWithOptionalModulesAndReasons) {
  std::string path = write_file(
      "# our caches\n"
      "\n"
      "Cache::*  server   # the session cache is bounded\n"
      "intern_string\n");
  Suppressions suppressions;
  suppressions.load_file(path);
  ASSERT_EQ(suppressions.list().size(), 2u);
  EXPECT_EQ(suppressions.match({frame("Cache::insert(int)", "/srv/server")}),
            "the session cache is bounded");
  EXPECT_FALSE(suppressions.match({frame("Cache::insert(int)", "/srv/other")}));
  std::string name = path.substr(path.rfind('/') + 1);
  EXPECT_EQ(suppressions.match({frame("intern_string", "/srv/other")}),
            "suppressed by " + name + ":4");
  std::remove(path.c_str());
}

TEST(Suppressions, AnUnreadableFileOrABadLineIsAClearError) {
  Suppressions suppressions;
  try {
    suppressions.load_file("/nonexistent/suppressions.txt");
    FAIL() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/suppressions.txt"), std::string::npos);
  }
  std::string path = write_file("ok_function\nthree words here\n");
  try {
    suppressions.load_file(path);
    FAIL() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(":2: expected FUNCTION_GLOB"), std::string::npos)
        << error.what();
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace memtrail::assemble
