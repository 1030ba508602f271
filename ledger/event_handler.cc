#include "ckptledger/event_handler.h"

#include "ckptledger/error.h"

namespace ckptledger {

void dispatch(const Event& e, EventHandler& h) {
  switch (e.kind) {
    case EventKind::kRunStarted:
      return h.on_run_started(e);
    case EventKind::kSaveBegun:
      return h.on_save_begun(e);
    case EventKind::kSaveCommitted:
      return h.on_save_committed(e);
    case EventKind::kSaveFailed:
      return h.on_save_failed(e);
    case EventKind::kPruned:
      return h.on_pruned(e);
    case EventKind::kBestUpdated:
      return h.on_best_updated(e);
    case EventKind::kPublished:
      return h.on_published(e);
    case EventKind::kResumed:
      return h.on_resumed(e);
    case EventKind::kRecovered:
      return h.on_recovered(e);
    case EventKind::kRunFinished:
      return h.on_run_finished(e);
    case EventKind::kValidated:
      return h.on_validated(e);
    case EventKind::kConfigChanged:
      return h.on_config_changed(e);
    case EventKind::kSavePrepared:
      return h.on_save_prepared(e);
  }
  throw_error(ErrorCode::kCorruption, "event seq " + std::to_string(e.seq) +
                                          " has an unknown kind number " +
                                          std::to_string(static_cast<int32_t>(e.kind)));
}

}  // namespace ckptledger
