// SPDX-License-Identifier: Apache-2.0
// Pyroscope's ingest API, as memtrail pushes a --trace target's profile to it.
#pragma once

#include <cstdint>
#include <string>

#include "serve/metrics_text.h"

namespace memtrail::serve {

// The application name with labels, as Pyroscope's `name` parameter takes it:
// "memtrail.memory{comm=app,pod_uid=...}". Label values keep letters, digits and "-_./:"; any
// other byte becomes '_' (a ',', '{', '}' or '=' would break the name apart). Empty ones are
// left out.
std::string pyroscope_name(const std::string& application, const Labels& labels);

// The path and query of one push: /ingest?name=...&from=...&until=...&format=pprof (from and
// until in Unix seconds), the URL's own path prefix (a proxy's) in front.
std::string pyroscope_ingest_target(const std::string& base_path, const std::string& name,
                                    int64_t from_s, int64_t until_s);

// The `sample_type_config` part: what each sample type of memtrail's profile is (in-use
// values are averaged over a time range, allocations are cumulative).
const char* pyroscope_sample_type_config();

// Percent-encodes everything but unreserved characters (RFC 3986).
std::string url_encode(const std::string& text);

}  // namespace memtrail::serve
