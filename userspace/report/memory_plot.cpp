// SPDX-License-Identifier: Apache-2.0
// A chart of memory over time per traced process, as a self-contained SVG.
#include "report/memory_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

#include "common/format.h"
#include "report/names.h"

namespace memtrail::report {
namespace {

constexpr int kWidth = 1000;
constexpr int kLeft = 90;  // room for the byte labels
constexpr int kRight = 30;
constexpr int kTitle = 46;  // title and the hover line
constexpr int kPlotHeight = 280;
constexpr int kAxis = 44;  // time labels and the axis name
constexpr int kLegendRow = 18;
constexpr int kGap = 24;  // between two processes' charts

struct Series {
  std::string name;  // in the legend
  std::string color;
  std::string dash;  // stroke-dasharray, empty for a solid line
  double width = 1.5;
  std::vector<std::pair<double, double>> points;  // seconds, bytes
};

// Site lines: distinct from the two process lines (RSS black, traced red).
constexpr const char* kSiteColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd",
                                       "#8c564b", "#17becf", "#e377c2"};

std::string number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.2f", value);
  std::string text = buffer;
  // "2.50" -> "2.5", "2.00" -> "2": tick labels stay short.
  while (text.back() == '0') text.pop_back();
  if (text.back() == '.') text.pop_back();
  return text;
}

// A step of 1, 2 or 5 times a power of ten giving about `ticks` ticks up to `max`.
double nice_step(double max, int ticks) {
  double raw = max / ticks;
  double power = std::pow(10, std::floor(std::log10(raw)));
  for (double factor : {1.0, 2.0, 5.0}) {
    if (factor * power >= raw) return factor * power;
  }
  return 10 * power;
}

struct Axis {
  double max = 1;  // top (or right) end, a whole number of steps
  double step = 1;
  double unit = 1;  // labels are value / unit followed by unit_name
  std::string unit_name;
};

// Bytes in the binary unit of the largest value, so labels read "1.5 MiB", not "1572864".
Axis byte_axis(double max_bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  Axis axis;
  size_t unit = 0;
  axis.unit = 1;
  while (max_bytes / axis.unit >= 1024 && unit + 1 < std::size(kUnits)) {
    axis.unit *= 1024;
    ++unit;
  }
  axis.unit_name = kUnits[unit];
  double scaled = std::max(max_bytes / axis.unit, 1.0);
  axis.step = nice_step(scaled, 5);
  if (unit == 0) axis.step = std::max(axis.step, 1.0);  // no fractions of a byte
  axis.max = std::ceil(scaled / axis.step - 1e-9) * axis.step;
  return axis;
}

// Seconds for runs up to 20 minutes, minutes beyond: "600 s" reads, "7200 s" less so.
Axis time_axis(double max_s) {
  Axis axis;
  axis.unit = max_s > 1200 ? 60 : 1;
  axis.unit_name = max_s > 1200 ? "min" : "s";
  double scaled = std::max(max_s / axis.unit, 1.0);
  axis.step = nice_step(scaled, 8);
  axis.max = std::ceil(scaled / axis.step - 1e-9) * axis.step;
  return axis;
}

// The site as the legend names it: its innermost Python frame in a Python program, else its
// innermost frame with a function name (an unsymbolized allocator wrapper says little), with
// that frame's file:line.
std::string site_label(const model::LeakSite& site) {
  if (site.stack.empty()) return "(no stack)";
  const model::Frame* named = &site.stack.front();
  auto python = std::find_if(site.stack.begin(), site.stack.end(),
                             [](const model::Frame& frame) { return frame.python; });
  if (python != site.stack.end()) {
    named = &*python;
  } else {
    for (const auto& frame : site.stack) {
      if (frame.function) {
        named = &frame;
        break;
      }
    }
  }
  std::string label = frame_name(*named);
  if (named->file) {
    label += " (" + base_name(*named->file) +
             (named->line ? ":" + std::to_string(*named->line) : "") + ")";
  }
  return label;
}

std::string rate(double bytes_per_s) {
  std::string sign = bytes_per_s < 0 ? "-" : "+";
  return sign + human_bytes(static_cast<uint64_t>(std::fabs(bytes_per_s))) + "/s";
}

std::vector<Series> series_of(const model::Report& report, const model::Target& target) {
  std::vector<Series> all;
  if (target.memory && !target.memory->series.empty()) {
    Series rss{"RSS (private: RssAnon)", "#222222", "", 2.5, {}};
    Series traced{"traced outstanding bytes", "#d62728", "6 3", 2.5, {}};
    for (const auto& point : target.memory->series) {
      rss.points.emplace_back(point.t_s, point.rss_anon_bytes);
      traced.points.emplace_back(point.t_s, point.traced_bytes);
    }
    all.push_back(std::move(rss));
    all.push_back(std::move(traced));
  }
  // The fastest growing sites: the ones a reader of "memory over time" is looking for.
  std::vector<const model::LeakSite*> growing;
  for (const auto& site : report.leaks) {
    if (site.pid != target.pid || !site.growth || site.growth->series.empty()) continue;
    if (site.suppressed || site.growth->bytes_per_s <= 0) continue;
    growing.push_back(&site);
  }
  std::stable_sort(growing.begin(), growing.end(), [](const auto* a, const auto* b) {
    return a->growth->bytes_per_s > b->growth->bytes_per_s;
  });
  if (growing.size() > kPlotSites) growing.resize(kPlotSites);
  for (size_t i = 0; i < growing.size(); ++i) {
    const auto& growth = *growing[i]->growth;
    Series line{site_label(*growing[i]) + ": " + growth.verdict + ", " + rate(growth.bytes_per_s),
                kSiteColors[i % std::size(kSiteColors)],
                "",
                1.5,
                {}};
    for (const auto& point : growth.series) line.points.emplace_back(point.t_s, point.bytes);
    all.push_back(std::move(line));
  }
  return all;
}

const char* kScript = R"JS(
function human(b) {
  var units = ["B", "KiB", "MiB", "GiB", "TiB"], u = 0;
  while (b >= 1024 && u < units.length - 1) { b /= 1024; u++; }
  return (u ? b.toFixed(1) : Math.round(b)) + " " + units[u];
}
function hover(panel, evt) {
  var box = panel.querySelector("rect.area"), p = box.ownerSVGElement.createSVGPoint();
  p.x = evt.clientX; p.y = evt.clientY;
  p = p.matrixTransform(box.getScreenCTM().inverse());
  var x0 = +box.getAttribute("x"), w = +box.getAttribute("width");
  var t = (p.x - x0) / w * +panel.dataset.tmax, parts = [];
  panel.querySelectorAll("polyline").forEach(function (line) {
    var best = null;
    line.dataset.values.split(" ").forEach(function (pair) {
      var v = pair.split(",").map(Number);
      if (!best || Math.abs(v[0] - t) < Math.abs(best[0] - t)) best = v;
    });
    if (best) parts.unshift(line.dataset.name + " " + human(best[1]));  // drawn in reverse
  });
  var cursor = panel.querySelector("line.cursor");
  cursor.setAttribute("x1", p.x); cursor.setAttribute("x2", p.x);
  cursor.style.display = "";
  panel.querySelector("text.details").textContent =
    "at " + t.toFixed(1) + " s: " + parts.join(" | ");
}
window.addEventListener("load", function () {
  var panels = document.querySelectorAll("g.panel");
  panels.forEach(function (panel) {
    panel.addEventListener("mousemove", function (evt) { hover(panel, evt); });
    panel.addEventListener("mouseleave", function () {
      panel.querySelector("line.cursor").style.display = "none";
      panel.querySelector("text.details").textContent = "";
    });
  });
  document.documentElement.setAttribute("data-rendered", panels.length);
});
)JS";

}  // namespace

std::string render_memory_plot_svg(const model::Report& report) {
  struct Panel {
    const model::Target* target;
    std::vector<Series> series;
    int height;
  };
  std::vector<Panel> panels;
  int total_height = 0;
  for (const auto& target : report.targets) {
    Panel panel{&target, series_of(report, target), 0};
    int legend_rows = std::max<int>(1, static_cast<int>(panel.series.size()));
    panel.height = kTitle + kPlotHeight + kAxis + legend_rows * kLegendRow + 10;
    total_height += panel.height + kGap;
    panels.push_back(std::move(panel));
  }
  if (panels.empty()) total_height = 60;

  std::ostringstream svg;
  svg << R"(<?xml version="1.0" encoding="UTF-8" standalone="no"?>)"
      << "\n"
      << R"(<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width=")" << kWidth
      << R"(" height=")" << total_height << R"(" viewBox="0 0 )" << kWidth << ' ' << total_height
      << R"(">)"
      << "\n"
      << "<style>text { font: 12px sans-serif; fill: #000; } .title { font-size: 16px; } "
         ".tick { fill: #444; } .grid { stroke: #e4e4e4; } .axis { stroke: #444; } "
         ".details { font: 11px monospace; fill: #333; }</style>\n"
      << "<script><![CDATA[" << kScript << "]]></script>\n"
      << R"(<rect width="100%" height="100%" fill="#ffffff"/>)"
      << "\n";
  if (panels.empty()) {
    svg << R"(<text x="20" y="34" class="title">)"
        << "memtrail: no traced process in this report</text>\n";
  }

  int top = 0;
  for (const auto& panel : panels) {
    const model::Target& target = *panel.target;
    double max_t = report.duration_s, max_bytes = 0;
    for (const auto& line : panel.series) {
      for (const auto& [t, bytes] : line.points) {
        max_t = std::max(max_t, t);
        max_bytes = std::max(max_bytes, bytes);
      }
    }
    Axis x_axis = time_axis(max_t), y_axis = byte_axis(max_bytes);
    double t_max = x_axis.max * x_axis.unit, bytes_max = y_axis.max * y_axis.unit;
    int plot_top = kTitle, plot_width = kWidth - kLeft - kRight;
    auto x_of = [&](double t) { return kLeft + t / t_max * plot_width; };
    auto y_of = [&](double bytes) {
      return plot_top + kPlotHeight - bytes / bytes_max * kPlotHeight;
    };

    svg << R"(<g class="panel" data-pid=")" << target.pid << R"(" data-tmax=")" << t_max
        << "\" transform=\"translate(0," << top << ")\">\n";
    std::string title = "memtrail: memory over time of pid " + std::to_string(target.pid) + " (" +
                        target.comm + ")" + (target.exited ? ", exited" : "");
    svg << R"(<text x=")" << kLeft << R"(" y="22" class="title">)" << xml_escape(title)
        << "</text>\n"
        << R"(<text x=")" << kLeft << R"(" y="38" class="details"></text>)"
        << "\n"
        << R"(<rect class="area" x=")" << kLeft << R"(" y=")" << plot_top << R"(" width=")"
        << plot_width << R"(" height=")" << kPlotHeight << R"(" fill="#fcfcfc"/>)"
        << "\n";

    // Grid lines and tick labels: bytes on the left, time below.
    for (double value = 0; value <= y_axis.max + 1e-9; value += y_axis.step) {
      double y = y_of(value * y_axis.unit);
      svg << R"(<line class="grid" x1=")" << kLeft << R"(" x2=")" << kLeft + plot_width
          << R"(" y1=")" << y << R"(" y2=")" << y << R"("/>)"
          << R"(<text class="tick" x=")" << kLeft - 6 << R"(" y=")" << y + 4
          << R"(" text-anchor="end">)" << number(value) << ' ' << y_axis.unit_name << "</text>\n";
    }
    for (double value = 0; value <= x_axis.max + 1e-9; value += x_axis.step) {
      double x = x_of(value * x_axis.unit);
      svg << R"(<line class="grid" x1=")" << x << R"(" x2=")" << x << R"(" y1=")" << plot_top
          << R"(" y2=")" << plot_top + kPlotHeight << R"("/>)"
          << R"(<text class="tick" x=")" << x << R"(" y=")" << plot_top + kPlotHeight + 16
          << R"(" text-anchor="middle">)" << number(value) << ' ' << x_axis.unit_name
          << "</text>\n";
    }
    svg << R"(<line class="axis" x1=")" << kLeft << R"(" x2=")" << kLeft << R"(" y1=")" << plot_top
        << R"(" y2=")" << plot_top + kPlotHeight << R"("/>)"
        << R"(<line class="axis" x1=")" << kLeft << R"(" x2=")" << kLeft + plot_width << R"(" y1=")"
        << plot_top + kPlotHeight << R"(" y2=")" << plot_top + kPlotHeight << R"("/>)"
        << "\n"
        << R"(<text x=")" << kLeft + plot_width / 2 << R"(" y=")" << plot_top + kPlotHeight + 34
        << R"(" text-anchor="middle">time since tracing started ()" << x_axis.unit_name
        << ")</text>\n"
        << "<text transform=\"translate(16," << plot_top + kPlotHeight / 2
        << R"svg() rotate(-90)" text-anchor="middle">bytes ()svg" << y_axis.unit_name
        << ")</text>\n";

    if (panel.series.empty()) {
      svg << R"(<text x=")" << kLeft + 20 << R"(" y=")" << plot_top + kPlotHeight / 2
          << R"(">no memory samples: the run was shorter than one --interval, or the report )"
             "predates them</text>\n";
    }
    // Drawn last first: the process's own lines on top, so the dashed traced line stays visible
    // where a single site makes up all of it.
    for (auto line_at = panel.series.rbegin(); line_at != panel.series.rend(); ++line_at) {
      const Series& line = *line_at;
      svg << R"(<polyline fill="none" stroke=")" << line.color << R"(" stroke-width=")"
          << line.width << '"';
      if (!line.dash.empty()) svg << R"( stroke-dasharray=")" << line.dash << '"';
      svg << R"( data-name=")" << xml_escape(line.name) << R"(" data-values=")";
      for (size_t i = 0; i < line.points.size(); ++i) {
        svg << (i ? " " : "") << line.points[i].first << ',' << line.points[i].second;
      }
      svg << R"(" points=")";
      char pair[64];
      for (size_t i = 0; i < line.points.size(); ++i) {
        std::snprintf(pair, sizeof(pair), "%s%.1f,%.1f", i ? " " : "", x_of(line.points[i].first),
                      y_of(line.points[i].second));
        svg << pair;
      }
      svg << R"("><title>)" << xml_escape(line.name) << "</title></polyline>\n";
    }
    int legend_y = plot_top + kPlotHeight + kAxis + 12;
    for (const auto& line : panel.series) {
      // Its legend row: a short stroke of the line's style, then its name.
      svg << R"(<line x1=")" << kLeft << R"(" x2=")" << kLeft + 28 << R"(" y1=")" << legend_y - 4
          << R"(" y2=")" << legend_y - 4 << R"(" stroke=")" << line.color << R"(" stroke-width=")"
          << line.width << '"';
      if (!line.dash.empty()) svg << R"( stroke-dasharray=")" << line.dash << '"';
      svg << R"(/><text class="legend" x=")" << kLeft + 36 << R"(" y=")" << legend_y << R"(">)"
          << xml_escape(line.name) << "</text>\n";
      legend_y += kLegendRow;
    }
    svg << R"(<line class="cursor" x1="0" x2="0" y1=")" << plot_top << R"(" y2=")"
        << plot_top + kPlotHeight << R"(" stroke="#888" style="display:none"/>)"
        << "\n"
        << "</g>\n";
    top += panel.height + kGap;
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace memtrail::report
