// Schema migrations, embedded at build time from migrations/NNNN_name.sql (see
// migrations/CMakeLists.txt).
#pragma once

#include <string>
#include <vector>

namespace ckptledger {

struct Migration {
  int version;       // NNNN; PRAGMA user_version after it is applied
  std::string name;  // the _name part of the file
  std::string sql;
};

// In order, version 1..N.
const std::vector<Migration>& embedded_migrations();

inline int latest_schema_version() { return static_cast<int>(embedded_migrations().size()); }

}  // namespace ckptledger
