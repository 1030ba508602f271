// The dashboard's files (tools/ckptledger/dashboard/), embedded into `ckptledger` at build time by
// cmake/embed_files.cmake, and where Debian's Chart.js (libjs-chart.js) is read from at run time.
#pragma once

#include <string_view>
#include <vector>

namespace ckptledger::cli {

struct EmbeddedFile {
  std::string_view name;  // index.html, dashboard.js, dashboard.css
  std::string_view content;
};
const std::vector<EmbeddedFile>& dashboard_files();

#ifndef CKPTLEDGER_CHARTJS_PATH
#define CKPTLEDGER_CHARTJS_PATH "/usr/share/javascript/chart.js/chart.min.js"
#endif
inline constexpr const char* kChartJsPath = CKPTLEDGER_CHARTJS_PATH;

}  // namespace ckptledger::cli
