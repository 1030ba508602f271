// Reports: the JSON documents the catalog verbs print with --json, built in one place so that the
// CLI (tools/ckptledger/main.cc), `watch` and the HTTP server (tools/ckptledger/serve.cc) give the
// same bytes for the same ledger state (docs/cli.md has each schema, docs/serve.md the endpoints).
//
// Each function runs its queries through one Catalog (one read snapshot per call) and returns the
// document; `render()` is the exact text the CLI prints. Errors are those of the Catalog (Error,
// UsageError).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catalog/catalog.h"

namespace ckptledger::report {

using ojson = nlohmann::ordered_json;

// The CLI's rendering of a document: indented by 2, then a newline.
std::string render(const ojson& doc);

// A JSON text column (config, detail) as an object; other values unchanged.
ojson parsed(const ojson& v);

// `history --json` rows (detail parsed). One row of it is a `watch --json` line and an SSE event.
ojson history_rows(const ResultSet& rs);
ojson history(Catalog& cat, const HistoryFilter& filter);

// `runs --json` (config parsed).
ojson runs(Catalog& cat);

// The rows of `best --json` for one ledger; with `root`, each led by work_dir and ledger.
ojson best_rows(Catalog& cat, const std::optional<std::string>& metric, bool root);

// The object of `latest --json` (null when none verifies); `parts` as LatestResult has it,
// `rejected` lists newer candidates that failed. With `root`, led by work_dir and ledger.
ojson latest(Catalog& cat, const LatestResult& r, bool root);

// `show PATH --json`; null when the ledger knows no such file. `parts` only for a checkpoint whose
// newest committed write has more than one part.
ojson show(Catalog& cat, const std::string& path);

// `verify --json`.
ojson verify(Catalog& cat, const VerifyResult& r);

// `state --json`.
ojson state(Catalog& cat, const StateResult& r);

// Many ledgers (`best --root`, `latest --root`): the rows of every ledger that could be read; the
// others' errors are appended to `errors` (one message each).
ojson best_many(const std::vector<std::string>& ledgers, const std::optional<std::string>& metric,
                std::vector<std::string>* errors);
ojson latest_many(const std::vector<std::string>& ledgers, std::vector<std::string>* errors,
                  std::vector<std::string>* skipped);

}  // namespace ckptledger::report
