// A complete libtorch training program with ckptledger (README.md "Use it in your loop"): an MLP
// trained with AdamW and StepLR, validated every epoch, the best checkpoint kept by accuracy.
// Run it twice on the same work_dir: the second run resumes from the ledger (weights, AdamW's
// moments, the scheduler, the RNG) and has nothing left to train.
// Built by tests/install_test.sh against the installed package, exactly as a user would.
#include <ckptledger/ckptledger.h>
#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  const std::string work_dir = argc > 1 ? argv[1] : "work_dirs/mlp_adamw";
  torch::manual_seed(0);
  torch::Tensor x = torch::randn({256, 4}), y = (x.sum(1) > 0).to(torch::kLong);
  torch::nn::Sequential model(torch::nn::Linear(4, 32), torch::nn::ReLU(), torch::nn::Dropout(0.1),
                              torch::nn::Linear(32, 2));
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(0.01));
  torch::optim::StepLR scheduler(optimizer, /*step_size=*/2, /*gamma=*/0.5);
  const int64_t batch = 64, iters_per_epoch = 256 / batch;

  auto train_step = [&](int64_t batch_idx) {  // a plain libtorch step
    model->train();
    torch::Tensor xb = x.narrow(0, batch_idx * batch, batch),
                  yb = y.narrow(0, batch_idx * batch, batch);
    optimizer.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(xb), yb).backward();
    optimizer.step();
    if (batch_idx + 1 == iters_per_epoch) scheduler.step();  // per epoch
  };
  auto validate = [&](int64_t /*epoch*/) {
    torch::NoGradGuard no_grad;
    model->eval();
    double acc = (model->forward(x).argmax(1) == y).to(torch::kFloat).mean().item<double>();
    return ckptledger::Metrics{{"acc", acc}};
  };

  // The whole integration: README.md shows exactly these lines (tests/readme_test.py checks it).
  // [readme-loop]
  ckptledger::TorchRunner runner(work_dir, *model, optimizer);  // model + optimizer + schedulers
  runner.add_scheduler(scheduler);
  ckptledger::CheckpointHook hook(ckptledger::HookConfig::from_json(  // MMEngine's options
      {{"interval", 1},
       {"max_keep_ckpts", 2},
       {"save_best", "acc"},
       {"published_keys", {"meta", "state_dict"}}}));
  ckptledger::LoopOptions options;
  options.resume = true;        // continue from the ledger's newest verified checkpoint, if any
  options.validate = validate;  // epoch -> ckptledger::Metrics{{"acc", acc}}
  ckptledger::EpochLoop(runner, hook, /*max_epochs=*/5, iters_per_epoch, train_step, options).run();
  // [/readme-loop]
  std::cout << "best: " << hook.hub_info().dump() << "\n";
  return 0;
}
