// SPDX-License-Identifier: Apache-2.0
// An interactive SVG flame graph of outstanding bytes.
#include "report/flamegraph.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <sstream>

#include "common/format.h"
#include "report/names.h"

namespace memtrail::report {
namespace {

constexpr int kWidth = 1200;
constexpr int kFrameHeight = 17;
constexpr int kTop = 40;     // title and controls
constexpr int kBottom = 26;  // the details line

struct Node {
  std::string name;      // shown in the box
  std::string location;  // "file:line", in the details
  uint64_t bytes = 0;
  std::string leaf_color;  // set where a site ends here
  std::map<std::string, std::unique_ptr<Node>> children;
};

std::string verdict_color(const model::LeakSite& site) {
  if (site.suppressed) return "#b8b8b8";
  std::string verdict = site.growth ? site.growth->verdict : "";
  if (verdict == "leak") return "#e0412f";
  if (verdict == "suspect") return "#f29b30";
  if (verdict == "steady") return "#6b9bd1";
  if (verdict == "transient") return "#7cc46b";
  return "#c9c9c9";
}

// Warm colors, stable per name, as flame graphs usually have.
std::string warm_color(const std::string& name) {
  uint32_t hash = 2166136261u;
  for (unsigned char c : name) hash = (hash ^ c) * 16777619u;
  char color[8];
  // Yellow to orange: red is kept for leaks.
  std::snprintf(color, sizeof(color), "#%02x%02x%02x", 230 + hash % 25, 165 + (hash >> 8) % 60,
                60 + (hash >> 16) % 50);
  return color;
}

const char* kScript = R"JS(
var W = %WIDTH%, frames = [], zoomed = null;
function el(id) { return document.getElementById(id); }
function layout() {
  var zx = 0, zw = 1, zd = -1;
  if (zoomed) { zx = +zoomed.dataset.x; zw = +zoomed.dataset.w; zd = +zoomed.dataset.d; }
  var shown = 0;
  frames.forEach(function (g) {
    var x = +g.dataset.x, w = +g.dataset.w, d = +g.dataset.d, rect = g.firstElementChild.nextElementSibling;
    var inside = x >= zx - 1e-12 && x + w <= zx + zw + 1e-12, ancestor = d < zd && x <= zx + 1e-12 && x + w >= zx + zw - 1e-12;
    var px, pw;
    if (ancestor) { px = 10; pw = W - 20; }
    else if (inside) { px = 10 + (x - zx) / zw * (W - 20); pw = w / zw * (W - 20); }
    else { g.style.display = "none"; return; }
    if (pw < 0.5) { g.style.display = "none"; return; }
    g.style.display = "";
    g.style.opacity = ancestor ? 0.6 : 1;
    rect.setAttribute("x", px.toFixed(2));
    rect.setAttribute("width", Math.max(pw - 0.5, 0.1).toFixed(2));
    var text = rect.nextElementSibling, name = g.dataset.name, fit = Math.floor((pw - 6) / 7);
    text.setAttribute("x", (px + 3).toFixed(2));
    text.textContent = fit < 3 ? "" : (name.length <= fit ? name : name.substring(0, fit - 2) + "..");
    shown++;
  });
  el("unzoom").style.opacity = zoomed ? 1 : 0;
  document.documentElement.setAttribute("data-rendered", shown);
  document.documentElement.setAttribute("data-zoom", zoomed ? zoomed.id : "");
}
function zoom(g) { zoomed = (g && +g.dataset.d > 0) ? g : null; layout(); }
function init() {
  frames = Array.prototype.slice.call(document.querySelectorAll("g.f"));
  frames.forEach(function (g) {
    g.addEventListener("click", function () { zoom(g); });
    g.addEventListener("mouseover", function () { el("details").textContent = g.dataset.info; });
    g.addEventListener("mouseout", function () { el("details").textContent = " "; });
  });
  el("unzoom").addEventListener("click", function () { zoom(null); });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") zoom(null); });
  var match = /zoom=(\d+)/.exec(window.location.hash);
  zoomed = match ? el("f" + match[1]) : null;
  layout();
}
window.addEventListener("load", init);
)JS";

}  // namespace

std::string render_flamegraph_svg(const model::Report& report) {
  Node root;
  root.name = "all";
  size_t max_depth = 0;
  for (const auto& site : report.leaks) {
    if (site.outstanding_bytes == 0) continue;
    std::string comm = comm_of(report, site.pid);
    Node* node = &root;
    root.bytes += site.outstanding_bytes;
    // Frames are told apart by their line too: two calls to malloc from one function are two
    // boxes, each with its own site's verdict color.
    struct Step {
      std::string name, location;
    };
    std::vector<Step> path{{comm, ""}};
    for (auto frame = site.stack.rbegin(); frame != site.stack.rend(); ++frame) {
      std::string location;
      if (frame->file) {
        location =
            base_name(*frame->file) + (frame->line ? ":" + std::to_string(*frame->line) : "");
      }
      path.push_back({frame_name(*frame), location});
    }
    for (const auto& step : path) {
      auto& child = node->children[step.name + "\n" + step.location];
      if (!child) {
        child = std::make_unique<Node>();
        child->name = step.name;
        child->location = step.location;
      }
      child->bytes += site.outstanding_bytes;
      node = child.get();
    }
    node->leaf_color = verdict_color(site);
    max_depth = std::max(max_depth, path.size());
  }

  int height = kTop + static_cast<int>(max_depth + 1) * kFrameHeight + kBottom;
  std::ostringstream svg;
  svg << R"(<?xml version="1.0" encoding="UTF-8" standalone="no"?>)"
      << "\n"
      << R"(<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width=")" << kWidth
      << R"(" height=")" << height << R"(" viewBox="0 0 )" << kWidth << ' ' << height << R"(">)"
      << "\n<style>text { font: 12px monospace; fill: #000; } g.f { cursor: pointer; } "
         "g.f:hover rect { stroke: #000; stroke-width: 0.5; } #unzoom { cursor: pointer; "
         "}</style>\n"
      << "<script><![CDATA[";
  std::string script = kScript;
  script.replace(script.find("%WIDTH%"), 7, std::to_string(kWidth));
  svg << script << "]]></script>\n"
      << R"(<rect width="100%" height="100%" fill="#fafafa"/>)"
      << "\n"
      << R"(<text x=")" << kWidth / 2 << R"(" y="24" text-anchor="middle" style="font-size:16px">)"
      << "memtrail: outstanding bytes by call stack (" << xml_escape(human_bytes(root.bytes))
      << ")</text>\n"
      << R"(<text id="unzoom" x="10" y="24" style="opacity:0">Reset zoom</text>)"
      << "\n"
      << R"(<text id="details" x="10" y=")" << height - 8 << R"("> </text>)"
      << "\n<g>\n";

  int next_id = 0;
  std::function<void(const Node&, double, size_t)> emit = [&](const Node& node, double x,
                                                              size_t depth) {
    double share =
        root.bytes ? static_cast<double>(node.bytes) / static_cast<double>(root.bytes) : 0;
    int y = height - kBottom - static_cast<int>(depth + 1) * kFrameHeight;
    char percent[16];
    std::snprintf(percent, sizeof(percent), "%.1f%%", share * 100);
    std::string info = node.name + (node.location.empty() ? "" : " at " + node.location) + " (" +
                       with_thousands(node.bytes) + " B, " + percent + ")";
    std::string color = !node.leaf_color.empty() && node.children.empty() ? node.leaf_color
                        : depth == 0                                      ? "#d8d8d8"
                                                                          : warm_color(node.name);
    svg << R"(<g class="f" id="f)" << next_id++ << R"(" data-x=")" << x << R"(" data-w=")" << share
        << R"(" data-d=")" << depth << R"(" data-name=")" << xml_escape(node.name)
        << R"(" data-info=")" << xml_escape(info) << R"("><title>)" << xml_escape(info)
        << R"(</title><rect x=")" << 10 + x * (kWidth - 20) << R"(" y=")" << y << R"(" width=")"
        << std::max(share * (kWidth - 20) - 0.5, 0.1) << R"(" height=")" << kFrameHeight - 1
        << R"(" rx="2" fill=")" << color << R"("/><text x=")" << 13 + x * (kWidth - 20)
        << R"(" y=")" << y + kFrameHeight - 5 << R"("></text></g>)"
        << "\n";
    // Children side by side, biggest first.
    std::vector<const Node*> children;
    for (const auto& [name, child] : node.children) children.push_back(child.get());
    std::stable_sort(children.begin(), children.end(),
                     [](const Node* a, const Node* b) { return a->bytes > b->bytes; });
    double child_x = x;
    for (const Node* child : children) {
      emit(*child, child_x, depth + 1);
      child_x +=
          root.bytes ? static_cast<double>(child->bytes) / static_cast<double>(root.bytes) : 0;
    }
  };
  emit(root, 0, 0);
  svg << "</g>\n</svg>\n";
  return svg.str();
}

}  // namespace memtrail::report
