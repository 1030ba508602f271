// `ckptledger-train`: the verbs that train through the real CheckpointHook and so link libtorch.
// Users call them through `ckptledger simulate|demo ...`, which hands them over to this binary
// (tools/ckptledger/main.cc); the hidden verbs are the child processes these start (one per run).
//   simulate SCENARIO --root DIR [-o TRACE]    docs/behaviour.md (simulate traces)
//   demo [--work-dir DIR] [--size small|full]  train, SIGKILL, resume, compare, show
//   demo --ranks N [--work-dir DIR]             the same with N ranks under torchrun
//                                               (tools/train/demo_ranks.h)
//   train --work-dir DIR [--config HOOK.json] [--iters N] [--optimizer ...] ...
//                                              tools/train/train_job.h
//   export WORK_DIR|CHECKPOINT -o FILE.pth       one torch.load-able file (tools/train/export.h)
// Exit codes as `ckptledger` (tools/cli.h, docs/cli.md).
#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "tools/cli.h"
#include "tools/train/demo.h"
#include "tools/train/demo_ranks.h"
#include "tools/train/export.h"
#include "tools/train/simulate.h"
#include "tools/train/train_job.h"

int main(int argc, char** argv) {
  namespace cli = ckptledger::cli;
  CLI::App app{"ckptledger-train: the verbs of `ckptledger` that train through the real hook"};
  app.set_version_flag("--version", std::string("ckptledger-train ") + CKPTLEDGER_VERSION);
  app.require_subcommand(1, 1);

  std::string sim_scenario, sim_root, sim_output;
  auto* simulate = app.add_subcommand(
      "simulate", "Run a scenario through the real hook (one process per run) and write its trace");
  simulate->add_option("scenario", sim_scenario, "SCENARIO.json, or a case file")->required();
  simulate->add_option("--root", sim_root, "scenario root: created if missing, must be empty")
      ->required();
  simulate->add_option("-o,--output", sim_output, "trace file (default: stdout)");

  // Hidden: one run of a scenario, started by `simulate` in the scenario root.
  std::string run_scenario, run_root, run_out;
  int run_index = 0;
  auto* simulate_run = app.add_subcommand("simulate-run", "");
  simulate_run->group("");
  simulate_run->add_option("scenario", run_scenario)->required();
  simulate_run->add_option("--root", run_root)->required();
  simulate_run->add_option("--run", run_index)->required();
  simulate_run->add_option("--out", run_out)->required();

  // `demo` and its hidden training process `demo-train`.
  ckptledger::DemoOptions demo_opts;
  std::string demo_dir, demo_size;
  auto* demo = app.add_subcommand(
      "demo",
      "Train a small real model, SIGKILL it, resume it from the ledger, compare it with "
      "an uninterrupted run and show the ledger (run again on the same --work-dir: resume)");
  demo->add_option("--work-dir", demo_dir, "default: ./ckptledger-demo-<timestamp>/ (new)");
  demo->add_option("--size", demo_size, "full (default, < 1 min) or small (CI)")
      ->check(CLI::IsMember({"small", "full"}));
  demo->add_flag("--no-kill", demo_opts.no_kill, "train without the injected SIGKILL");
  int demo_ranks = 1;
  demo->add_option("--ranks", demo_ranks,
                   "1 (default): one process; N >= 2: N ranks under torchrun, a random rank "
                   "SIGKILLed during a save, compared with an uninterrupted N-rank run")
      ->check(CLI::Range(1, 8));
  ckptledger::DemoTrainOptions train_opts;
  auto* demo_train = app.add_subcommand("demo-train", "");
  demo_train->group("");
  demo_train->add_option("--work-dir", train_opts.work_dir)->required();
  demo_train->add_option("--size", train_opts.size);
  demo_train->add_option("--seed", train_opts.seed);
  demo_train->add_option("--status-fd", train_opts.status_fd);
  demo_train->add_option("--label", train_opts.label);
  demo_train->add_flag("--resume", train_opts.resume);

  ckptledger::TrainJobOptions job;
  std::string job_config, job_resume_from, job_load_from;
  auto* train = app.add_subcommand(
      "train",
      "Train the demo's model (MLP on the spiral) through the hook; resumes from the work_dir");
  train->add_option("--work-dir", job.work_dir, "the run's work_dir (created if missing)")
      ->required();
  train->add_option("--config", job_config, "HOOK.json: MMEngine's CheckpointHook options");
  train->add_option("--iters", job.iters, "iterations (default 200)");
  train->add_option("--seed", job.seed, "seed of data, weights and shuffling (default 0)");
  train
      ->add_option("--optimizer", job.optimizer, "sgd (default) | adam | adamw | rmsprop | adagrad")
      ->check(CLI::IsMember({"sgd", "adam", "adamw", "rmsprop", "adagrad"}));
  train->add_flag("--amsgrad", job.amsgrad, "Adam / AdamW with amsgrad");
  train->add_option("--scheduler", job.scheduler, "none (default) | step (StepLR)")
      ->check(CLI::IsMember({"none", "step"}));
  train->add_option("--dropout", job.dropout, "dropout after each hidden layer (default 0)");
  train->add_option("--resume-from", job_resume_from, "resume from this checkpoint file");
  train->add_option("--load-from", job_load_from, "load this file's weights, then train");
  train->add_flag("--progress", job.progress, "print `iter N` after each iteration");
  train->add_option("--iter-delay-ms", job.iter_delay_ms,
                    "sleep this long after each iteration (a slower job, for following it live)");

  ckptledger::ExportOptions exp;
  std::string exp_ledger;
  auto* exportv = app.add_subcommand(
      "export",
      "Write a checkpoint of any layout (the newest that verifies, or the one named) as one "
      "MMEngine-layout file that torch.load opens");
  exportv
      ->add_option("source", exp.source,
                   "work_dir or ledger (its newest committed regular checkpoint that verifies), "
                   "or a checkpoint file")
      ->required();
  exportv->add_option("-o,--output", exp.output, "the file to write (FILE.pth)")->required();
  exportv->add_option(
      "--ledger", exp_ledger,
      "the ledger (or work_dir) that lists the checkpoint (default: its directory's)");
  exportv->add_flag("--force", exp.force, "replace an existing output file");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? cli::kExitOk : cli::kExitUsage;
  }
  return cli::guarded([&]() -> int {
    if (*simulate) {
      ckptledger::SimulateOptions o;
      o.scenario_path = sim_scenario;
      o.root = sim_root;
      if (!sim_output.empty()) o.output = sim_output;
      o.self_exe = cli::self_exe(argv[0]);
      ckptledger::simulate(o);
      return cli::kExitOk;
    }
    if (*simulate_run) {
      return ckptledger::simulate_run(run_scenario, run_root, run_index, run_out);
    }
    if (*demo && demo_ranks > 1) {
      ckptledger::DemoRanksOptions o;
      if (!demo_dir.empty()) o.work_dir = demo_dir;
      o.ranks = demo_ranks;
      o.no_kill = demo_opts.no_kill;
      o.self_exe = cli::self_exe(argv[0]);
      return ckptledger::demo_ranks(o);
    }
    if (*demo) {
      if (!demo_dir.empty()) demo_opts.work_dir = demo_dir;
      if (!demo_size.empty()) demo_opts.size = demo_size;
      demo_opts.self_exe = cli::self_exe(argv[0]);
      return ckptledger::demo(demo_opts);
    }
    if (*train) {
      if (!job_config.empty()) job.config = job_config;
      if (!job_resume_from.empty()) job.resume_from = job_resume_from;
      if (!job_load_from.empty()) job.load_from = job_load_from;
      return ckptledger::train_job(job);
    }
    if (*exportv) {
      if (!exp_ledger.empty()) exp.ledger = exp_ledger;
      const ckptledger::ExportResult r = ckptledger::export_checkpoint(exp);
      for (const auto& [path, why] : r.skipped) fmt::print(stderr, "skipped {}: {}\n", path, why);
      if (r.checkpoint.empty()) {
        fmt::print(stderr,
                   "ckptledger: no committed regular checkpoint of {} verifies; nothing "
                   "written\n",
                   r.ledger);
        return cli::kExitNothing;
      }
      fmt::print("exported {}{} to {}: {} bytes, sha256 {}\n", r.checkpoint,
                 r.layout.empty() ? std::string()
                                  : fmt::format(" (layout {}, {} part(s))", r.layout, r.parts),
                 ckptledger::absolute_normal(exp.output), r.bytes, r.sha256);
      return cli::kExitOk;
    }
    return ckptledger::demo_train(train_opts);
  });
}
