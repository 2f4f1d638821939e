// SPDX-License-Identifier: Apache-2.0
// Pyroscope's ingest API, as memtrail pushes a --trace target's profile to it.
#include "serve/pyroscope.h"

#include <cctype>
#include <cstdio>

namespace memtrail::serve {

std::string url_encode(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

std::string pyroscope_name(const std::string& application, const Labels& labels) {
  std::string name = application + "{";
  bool first = true;
  for (const auto& [key, value] : labels) {
    if (value.empty()) continue;
    if (!first) name += ',';
    first = false;
    name += key + "=";
    for (unsigned char c : value) {
      bool kept = std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '/' || c == ':';
      name += kept ? static_cast<char>(c) : '_';
    }
  }
  return name + "}";
}

std::string pyroscope_ingest_target(const std::string& base_path, const std::string& name,
                                    int64_t from_s, int64_t until_s) {
  std::string path = base_path;
  while (!path.empty() && path.back() == '/') path.pop_back();
  return path + "/ingest?name=" + url_encode(name) + "&from=" + std::to_string(from_s) +
         "&until=" + std::to_string(until_s) + "&format=pprof&spyName=memtrail";
}

const char* pyroscope_sample_type_config() {
  return R"({"alloc_objects":{"units":"objects","cumulative":true},)"
         R"("alloc_space":{"units":"bytes","cumulative":true},)"
         R"("inuse_objects":{"units":"objects","aggregation":"average"},)"
         R"("inuse_space":{"units":"bytes","aggregation":"average"}})";
}

}  // namespace memtrail::serve
