#include "tools/train/train_job.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/distributed.h"
#include "ckptledger/error.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/torch_runner.h"
#include "tools/train/spiral.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

constexpr int64_t kBatchSize = 16;
constexpr int64_t kHidden = 32;
constexpr int64_t kPointsPerClass = 300;

// The epoch's batch order: a permutation drawn from torch's default generator at the epoch's first
// batch, kept (as the data loader's state) until the epoch ends.
class ShuffledBatches : public Stateful {
 public:
  explicit ShuffledBatches(int64_t n) : n_(n) {}
  int64_t per_epoch() const { return (n_ + kBatchSize - 1) / kBatchSize; }

  // The indices of the batch of iteration `iter`.
  torch::Tensor batch(int64_t iter) {
    const int64_t epoch = iter / per_epoch();
    if (epoch != epoch_ || !perm_.defined()) {
      perm_ = torch::randperm(n_, torch::kInt64);
      epoch_ = epoch;
    }
    const int64_t begin = (iter % per_epoch()) * kBatchSize;
    return perm_.slice(0, begin, std::min(begin + kBatchSize, n_));
  }

  Dict state_dict() override {
    Dict d = make_dict();
    d.insert("epoch", epoch_);
    d.insert("perm", perm_.defined() ? c10::IValue(perm_) : c10::IValue());
    return d;
  }
  void load_state_dict(const Dict& d) override {
    const int64_t epoch =
        torch_state::as_int(torch_state::require(d, "epoch", "data_loader"), "data_loader.epoch");
    c10::IValue perm = torch_state::require(d, "perm", "data_loader");
    if (!perm.isNone()) {
      torch::Tensor t = torch_state::as_tensor(perm, "data_loader.perm");
      if (t.dim() != 1 || t.size(0) != n_ || t.scalar_type() != torch::kInt64) {
        torch_state::refuse("data_loader.perm",
                            "not a permutation of the " + std::to_string(n_) + " training points");
      }
      perm_ = t.clone();
    } else {
      perm_ = torch::Tensor();
    }
    epoch_ = epoch;
  }

 private:
  int64_t n_;
  int64_t epoch_ = -1;
  torch::Tensor perm_;
};

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainJobOptions& o,
                                                        torch::nn::Module& model) {
  using namespace torch::optim;  // NOLINT
  const std::vector<torch::Tensor> params = model.parameters();
  if (o.amsgrad && o.optimizer != "adam" && o.optimizer != "adamw") {
    throw_error(ErrorCode::kInvalidArgument,
                "train: --amsgrad applies to adam and adamw, not " + o.optimizer);
  }
  if (o.optimizer == "sgd") {
    return std::make_unique<SGD>(params, SGDOptions(0.1).momentum(0.9).nesterov(true));
  }
  if (o.optimizer == "adam") {
    return std::make_unique<Adam>(params, AdamOptions(0.01).amsgrad(o.amsgrad));
  }
  if (o.optimizer == "adamw") {
    return std::make_unique<AdamW>(params,
                                   AdamWOptions(0.01).weight_decay(0.01).amsgrad(o.amsgrad));
  }
  if (o.optimizer == "rmsprop") {
    return std::make_unique<RMSprop>(params, RMSpropOptions(0.01).momentum(0.9).centered(true));
  }
  if (o.optimizer == "adagrad") return std::make_unique<Adagrad>(params, AdagradOptions(0.1));
  throw_error(ErrorCode::kInvalidArgument,
              "train: --optimizer must be sgd, adam, adamw, rmsprop or adagrad; got \"" +
                  o.optimizer + "\"");
}

nlohmann::json hook_config(const TrainJobOptions& o) {
  nlohmann::json j = {
      {"interval", 20}, {"by_epoch", false}, {"max_keep_ckpts", 3}, {"save_best", "acc"}};
  if (o.config) {
    std::ifstream in(*o.config);
    if (!in) throw_error(ErrorCode::kNotFound, "train: cannot read --config " + *o.config);
    std::stringstream ss;
    ss << in.rdbuf();
    j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (!j.is_object()) {
      throw_error(ErrorCode::kInvalidArgument,
                  "train: --config " + *o.config + " is not a JSON object");
    }
    if (!j.contains("by_epoch")) j["by_epoch"] = false;
  }
  if (j["by_epoch"] != false) {
    throw_error(ErrorCode::kInvalidArgument,
                "train: the job is an iteration loop; its hook config needs \"by_epoch\": false");
  }
  return j;
}

}  // namespace

int train_job(const TrainJobOptions& o) {
  if (o.iters < 1) throw_error(ErrorCode::kInvalidArgument, "train: --iters must be >= 1");
  if (o.iter_delay_ms < 0 || o.iter_delay_ms > 60000) {
    throw_error(ErrorCode::kInvalidArgument, "train: --iter-delay-ms must be in [0, 60000]");
  }
  if (!(o.dropout >= 0.0 && o.dropout < 1.0)) {
    throw_error(ErrorCode::kInvalidArgument, "train: --dropout must be in [0, 1)");
  }
  if (o.scheduler != "none" && o.scheduler != "step") {
    throw_error(ErrorCode::kInvalidArgument,
                "train: --scheduler must be none or step; got \"" + o.scheduler + "\"");
  }
  if (o.resume_from && o.load_from) {
    throw_error(ErrorCode::kInvalidArgument,
                "train: --resume-from and --load-from exclude each other");
  }
  const nlohmann::json config = hook_config(o);
  const int64_t interval = config.value("interval", 20);
  torch::set_num_threads(1);
  torch::manual_seed(static_cast<uint64_t>(o.seed));
  const Spiral data = make_spiral(o.seed, kPointsPerClass);
  torch::nn::Sequential model(torch::nn::Linear(2, kHidden), torch::nn::ReLU(),
                              torch::nn::Dropout(o.dropout), torch::nn::Linear(kHidden, kHidden),
                              torch::nn::ReLU(), torch::nn::Dropout(o.dropout),
                              torch::nn::Linear(kHidden, Spiral::kClasses));
  std::unique_ptr<torch::optim::Optimizer> optimizer = make_optimizer(o, *model);
  std::unique_ptr<torch::optim::StepLR> scheduler;
  if (o.scheduler == "step") {
    scheduler = std::make_unique<torch::optim::StepLR>(
        *optimizer, static_cast<unsigned>(std::max<int64_t>(o.iters / 4, 1)), 0.5);
  }
  ShuffledBatches loader(data.x_train.size(0));

  auto log = [](LogLevel level, const std::string& message) {
    std::cerr << log_level_name(level) << " " << message << "\n";
  };
  TorchRunner runner(o.work_dir, *model, *optimizer);
  // Optional: a checkpoint written elsewhere (Python, MMEngine) has no position of ours.
  runner.set_log(log).add_stateful("data_loader", loader, /*optional=*/true);
  if (scheduler) runner.add_scheduler(*scheduler);
  runner.meta().insert("seed", o.seed);
  runner.meta().insert("experiment_name", std::string("ckptledger-train-") + o.optimizer);
  CheckpointHook hook(HookConfig::from_json(config), log);
  // Under torchrun: one rank of a data-parallel job (docs/distributed.md). Every rank starts from
  // rank 0's weights (set_job broadcasts them), draws the same batch order and trains on its rows
  // of each batch (rank r: rows r, r + N, ...); the gradients are summed over the ranks, so each
  // step is the whole batch's. The loop joins the hook to the runner's job.
  std::optional<JobGroup> job = join_from_env();
  const int rank = job ? job->rank : 0, world = job ? job->world_size : 1;
  if (job) runner.set_job(*job);

  auto train_step = [&](int64_t /*data_idx*/) {
    torch::Tensor idx = loader.batch(runner.iter());
    const int64_t batch = idx.size(0);
    if (job) idx = idx.slice(0, rank, batch, world);
    model->train();
    torch::Tensor x = data.x_train.index_select(0, idx), y = data.y_train.index_select(0, idx);
    optimizer->step([&] {
      optimizer->zero_grad();
      torch::Tensor loss;
      if (!job) {
        loss = torch::nn::functional::cross_entropy(model->forward(x), y);
        loss.backward();
        return loss;
      }
      loss = torch::nn::functional::cross_entropy(
                 model->forward(x), y,
                 torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)) /
             static_cast<double>(batch);
      loss.backward();
      // Each rank's loss is its rows' share of the whole batch's mean: the sum is the batch's.
      runner.allreduce_gradients(/*average=*/false);
      return loss;
    });
    if (scheduler) scheduler->step();
    if (o.iter_delay_ms > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(o.iter_delay_ms));
    if (o.progress) {
      std::printf("iter %lld\n", static_cast<long long>(runner.iter() + 1));
      std::fflush(stdout);
    }
  };
  LoopOptions loop;
  loop.resume = o.load_from ? false : true;
  if (o.resume_from) loop.load_from = *o.resume_from;
  if (o.load_from) loop.load_from = *o.load_from;
  loop.val_interval = interval;
  loop.validate = [&](int64_t) {
    torch::NoGradGuard no_grad;
    model->eval();
    if (!job) {
      torch::Tensor logits = model->forward(data.x_val);
      const double loss = torch::nn::functional::cross_entropy(logits, data.y_val).item<double>();
      const double acc = logits.argmax(1).eq(data.y_val).to(torch::kFloat64).mean().item<double>();
      return Metrics{{"acc", acc}, {"loss", loss}};
    }
    // Each rank its rows of the validation split; the sums all-reduced: every rank gets the same
    // metrics, so every rank makes the same best decisions.
    const int64_t n = data.x_val.size(0);
    torch::Tensor xv = data.x_val.slice(0, rank, n, world),
                  yv = data.y_val.slice(0, rank, n, world);
    torch::Tensor logits = model->forward(xv);
    std::vector<torch::Tensor> sums{torch::stack(
        {torch::nn::functional::cross_entropy(
             logits, yv, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
             .to(torch::kFloat64),
         logits.argmax(1).eq(yv).sum().to(torch::kFloat64)})};
    allreduce_sum(*job, sums);
    return Metrics{{"acc", sums[0][1].item<double>() / static_cast<double>(n)},
                   {"loss", sums[0][0].item<double>() / static_cast<double>(n)}};
  };
  IterLoop(runner, hook, o.iters, loader.per_epoch(), train_step, loop).run();
  return 0;
}

}  // namespace ckptledger
