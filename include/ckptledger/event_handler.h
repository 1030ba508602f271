// Replay: one handler method per event kind, one fold (RocksDB VersionEditHandler).
//
// A fold is a class derived from EventHandler that overrides the kinds it cares about. The same
// fold serves resume, `state --as-of`, and the property test "live state == replayed state".
// dispatch() is the only switch over kinds in the project.
#pragma once

#include "ckptledger/event.h"

namespace ckptledger {

class EventHandler {
 public:
  virtual ~EventHandler() = default;
  virtual void on_run_started(const Event&) {}
  virtual void on_save_begun(const Event&) {}
  virtual void on_save_committed(const Event&) {}
  virtual void on_save_failed(const Event&) {}
  virtual void on_pruned(const Event&) {}
  virtual void on_best_updated(const Event&) {}
  virtual void on_published(const Event&) {}
  virtual void on_resumed(const Event&) {}
  virtual void on_recovered(const Event&) {}
  virtual void on_run_finished(const Event&) {}
  virtual void on_validated(const Event&) {}
  virtual void on_config_changed(const Event&) {}
  virtual void on_save_prepared(const Event&) {}
};

// Calls the handler method for e.kind.
void dispatch(const Event& e, EventHandler& handler);

}  // namespace ckptledger
