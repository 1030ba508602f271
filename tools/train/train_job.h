// `ckptledger-train train`: a real training job through the hook and TorchRunner, for people
// trying ckptledger on their machine, for the tests and for the benches.
//
// Data: the spiral (tools/train/spiral.h), in batches of 16 drawn from a permutation of the
// training split that torch's default generator draws at the start of each epoch (the batch
// position is a Stateful, "data_loader", so a mid-epoch resume continues the same epoch).
// Model: MLP 2 -> 32 -> 32 -> 3 with ReLU and optional dropout after each hidden layer.
// Optimizer: --optimizer sgd (momentum 0.9, Nesterov) | adam | adamw | rmsprop (momentum 0.9,
// centered) | adagrad, --amsgrad for Adam/AdamW; --scheduler step: StepLR(step_size = iters / 4,
// gamma 0.5) stepped every iteration. An iteration loop of --iters iterations; validation
// (accuracy "acc", loss "loss") every `interval` iterations of the hook config, and at the end.
// It resumes automatically from the work dir's ledger; --resume-from FILE resumes from that file
// instead (e.g. one written by Python), --load-from FILE loads its weights only.
//
// The hook config (--config HOOK.json) is MMEngine's CheckpointHook options; by_epoch must be
// false (default here: interval 20, by_epoch false, max_keep_ckpts 3, save_best "acc").
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ckptledger {

struct TrainJobOptions {
  std::string work_dir;
  std::optional<std::string> config;  // HOOK.json
  int64_t iters = 200;
  int64_t seed = 0;
  std::string optimizer = "sgd";
  bool amsgrad = false;
  std::string scheduler = "none";  // none | step
  double dropout = 0.0;
  std::optional<std::string> resume_from;
  std::optional<std::string> load_from;
  bool progress = false;  // "iter N" on stdout after each iteration (flushed)
  int64_t iter_delay_ms =
      0;  // sleep after each iteration: a slower job for tests that follow one live
};

// Returns the exit status (0); throws ckptledger::Error.
int train_job(const TrainJobOptions& options);

}  // namespace ckptledger
