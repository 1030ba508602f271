// Use ckptledger in your own loop: a complete program (README.md "Use it in your loop").
// Built by tests/install_test.sh against the installed package, exactly as a user would.
#include <ckptledger/ckptledger.h>
#include <torch/torch.h>

#include <iostream>

// Your model, optimizer and counters, seen by the hook through the Runner interface.
class MyRunner : public ckptledger::LoopRunner {
 public:
  explicit MyRunner(std::string work_dir) : work_dir_(std::move(work_dir)) {}
  std::string work_dir() const override { return work_dir_; }
  bool has_param_schedulers() const override { return false; }
  c10::impl::GenericDict checkpoint_state(bool with_optimizer, bool) override {
    c10::impl::GenericDict out(c10::StringType::get(), c10::AnyType::get());
    c10::impl::GenericDict weights(c10::StringType::get(), c10::AnyType::get());
    for (const auto& p : model->named_parameters()) weights.insert(p.key(), p.value());
    out.insert("state_dict", weights);
    if (with_optimizer) {
      c10::impl::GenericDict opt(c10::StringType::get(), c10::AnyType::get());
      opt.insert("lr", optimizer.param_groups()[0].options().get_lr());
      out.insert("optimizer", opt);
    }
    return out;
  }
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) override {
    torch::NoGradGuard no_grad;
    auto weights = ckpt.at("state_dict").toGenericDict();
    for (auto& p : model->named_parameters()) p.value().copy_(weights.at(p.key()).toTensor());
    if (resume) restore_counters(ckpt);  // epoch and iter from meta
  }

  torch::nn::Linear model{4, 2};
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1)};

 private:
  std::string work_dir_;
};

int main(int argc, char** argv) {
  const std::string work_dir = argc > 1 ? argv[1] : "work_dirs/my_exp";
  torch::manual_seed(0);
  MyRunner runner(work_dir);

  torch::Tensor x = torch::randn({64, 4}), y = (x.sum(1) > 0).to(torch::kLong);
  auto train_step = [&](int64_t /*batch_idx*/) {
    runner.optimizer.zero_grad();
    torch::nn::functional::cross_entropy(runner.model->forward(x), y).backward();
    runner.optimizer.step();
  };
  auto validate = [&](int64_t /*epoch*/) {
    torch::NoGradGuard no_grad;
    double acc = (runner.model->forward(x).argmax(1) == y).to(torch::kFloat).mean().item<double>();
    return ckptledger::Metrics{{"acc", acc}};
  };
  auto print_log = [](ckptledger::LogLevel level, const std::string& msg) {
    std::cout << ckptledger::log_level_name(level) << " " << msg << "\n";
  };

  // The loop integration: README.md shows exactly these lines (tests/readme_test.py checks it).
  // [readme-loop]
  // MMEngine's CheckpointHook options, same names and defaults.
  ckptledger::CheckpointHook hook(
      ckptledger::HookConfig::from_json({{"interval", 1},
                                         {"max_keep_ckpts", 2},
                                         {"save_best", "acc"},
                                         {"published_keys", {"meta", "state_dict"}}}),
      print_log);
  ckptledger::LoopOptions options;
  options.resume = true;        // continue from the ledger's newest verified checkpoint, if any
  options.validate = validate;  // step -> ckptledger::Metrics{{"acc", acc}}
  ckptledger::EpochLoop(runner, hook, /*max_epochs=*/5, /*iters_per_epoch=*/4, train_step, options)
      .run();
  std::cout << "best: " << hook.hub_info().dump() << "\n";
  // [/readme-loop]
  return 0;
}
