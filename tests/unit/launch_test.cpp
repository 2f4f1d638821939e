// SPDX-License-Identifier: Apache-2.0
// A command followed through its #! lines and env(1), on scripts the tests write.
#include "inspect/launch.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/error.h"

namespace memtrail::inspect {
namespace {

class Launch : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/memtrail-launch-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `text` to DIR/name with `mode`; returns its path.
  std::string file(const std::string& name, const std::string& text, mode_t mode = 0755) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    ::chmod(path.c_str(), mode);
    return path;
  }

  // The message of the memtrail::Error resolve_launch throws, or "" when it does not.
  std::string failure(const std::string& command, const std::string& path = "/usr/bin:/bin") {
    try {
      resolve_launch(command, path);
    } catch (const Error& error) {
      return error.what();
    }
    return "";
  }

  std::string dir_;
};

bool has_step(const LaunchChain& chain, const std::string& text) {
  for (const auto& step : chain.steps) {
    if (step.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST_F(Launch, AProgramIsItsOwnChain) {
  auto chain = resolve_launch("true", "/usr/bin:/bin");
  EXPECT_EQ(chain.executable, "/usr/bin/true");
  EXPECT_EQ(chain.program, "/usr/bin/true");
  ASSERT_EQ(chain.steps.size(), 1u);
}

TEST_F(Launch, AScriptOnPathRunsItsInterpreterWithTheLineArgument) {
  file("tool", "#!/bin/sh -e\necho hi\n");
  auto chain = resolve_launch("tool", "/nonexistent:" + dir_);
  EXPECT_EQ(chain.executable, dir_ + "/tool");
  EXPECT_EQ(chain.program, "/bin/sh");
  EXPECT_TRUE(has_step(chain, dir_ + "/tool: a script, #!/bin/sh -e")) << chain.steps[0];
}

TEST_F(Launch, NestedScriptsLeadToTheLastInterpreter) {
  std::string inner = file("inner", "#!/bin/sh\n");
  std::string outer = file("outer", "#!" + inner + "\n");
  auto chain = resolve_launch(outer, "");
  EXPECT_EQ(chain.program, "/bin/sh");
  EXPECT_EQ(chain.steps.size(), 3u);
}

TEST_F(Launch, EnvIsTheProgramAndTheCommandItExecutesIsFollowed) {
  std::string python = file("python3", "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n");
  std::string app = file("app.py", "#!/usr/bin/env python3\nprint(1)\n");
  auto chain = resolve_launch(app, dir_ + ":/usr/bin");
  EXPECT_EQ(chain.program, "/usr/bin/env");
  EXPECT_TRUE(has_step(chain, "env executes python3: " + python)) << chain.steps.size();
  // The shim found on PATH is a script itself: followed to its interpreter.
  EXPECT_TRUE(has_step(chain, python + ": a script, #!/bin/sh"));
}

TEST_F(Launch, EnvSplitsTheLineWithDashS) {
  std::string app = file("app", "#!/usr/bin/env -S PATH=/usr/bin python3 -u\n");
  auto chain = resolve_launch(app, "/nonexistent");  // env's PATH= is the one searched
  EXPECT_TRUE(has_step(chain, "env executes python3: /usr/bin/python3"));
  EXPECT_EQ(split_env_string("a  'b c'\t\"d\\\"e\" f\\_g"),
            (std::vector<std::string>{"a", "b c", "d\"e", "f g"}));
}

TEST_F(Launch, BadCommandsFailWithOneLineNamingTheFile) {
  std::string missing = file("missing", "#!/usr/bin/no-such-python3\n");
  EXPECT_EQ(failure(missing), "cannot run " + missing +
                                  ": its #! interpreter /usr/bin/no-such-python3 does not exist");
  std::string plain = file("plain", "#!/bin/sh\n", 0644);
  EXPECT_EQ(failure(plain), "cannot run " + plain + ": not an executable file");
  std::string text = file("text", "echo no shebang\n");
  EXPECT_EQ(failure(text), "cannot run " + text + ": " + text +
                               " is neither a program (ELF) nor a script starting with #!");
  std::string a = dir_ + "/a", b = dir_ + "/b";
  file("a", "#!" + b + "\n");
  file("b", "#!" + a + "\n");
  EXPECT_NE(failure(a).find("its #! interpreters loop"), std::string::npos) << failure(a);
  std::string self = file("self", "#!/usr/bin/env self\n");
  EXPECT_NE(failure(self, dir_).find("loop"), std::string::npos) << failure(self, dir_);
  std::string unknown = file("unknown", "#!/usr/bin/env no-such-interpreter\n");
  EXPECT_EQ(failure(unknown), "cannot run " + unknown +
                                  ": its #! line runs `env no-such-interpreter`, and "
                                  "no-such-interpreter is not found in PATH");
  std::string unsplit = file("unsplit", "#!/usr/bin/env python3 -u\n");
  EXPECT_NE(failure(unsplit).find("single argument `python3 -u`"), std::string::npos);
  std::string crlf = file("crlf", "#!/bin/sh\r\n");
  EXPECT_NE(failure(crlf).find("Windows line endings"), std::string::npos) << failure(crlf);
  EXPECT_EQ(failure("no-such-command-here"),
            "cannot run no-such-command-here: command not found in PATH");
}

}  // namespace
}  // namespace memtrail::inspect
