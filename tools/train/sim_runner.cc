#include "tools/train/sim_runner.h"

#include <cmath>
#include <filesystem>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "ckptledger/error.h"
#include "ckptledger/torch_state.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

constexpr int64_t kBatchSize = 8;
constexpr double kBaseLr = 0.1;
constexpr double kMomentum = 0.9;

using namespace torch_state;  // NOLINT: str_dict, find, double_list, as_doubles

}  // namespace

struct SimRunner::Impl {
  torch::nn::Sequential model;
  std::unique_ptr<torch::optim::SGD> optimizer;
  StepLRState scheduler;
  int64_t seed = 0;

  torch::optim::SGDOptions& group_options() {
    return static_cast<torch::optim::SGDOptions&>(optimizer->param_groups().at(0).options());
  }

  GenericDict optimizer_state() {
    return optimizer_state_dict(*optimizer, scheduler.base_lrs.empty()
                                                ? std::vector<double>{}
                                                : std::vector<double>{scheduler.base_lrs.at(0)});
  }
  void load_optimizer(const GenericDict& sd) { load_optimizer_state_dict(*optimizer, sd); }

  GenericDict scheduler_state() const {
    GenericDict d = str_dict();
    d.insert("step_size", scheduler.step_size);
    d.insert("gamma", scheduler.gamma);
    d.insert("base_lrs", double_list(scheduler.base_lrs));
    d.insert("last_epoch", scheduler.last_epoch);
    d.insert("_last_lr", double_list(scheduler.last_lr));
    return d;
  }

  void load_scheduler(const GenericDict& d) {
    if (auto v = find(d, "step_size"); v && v->isInt()) scheduler.step_size = v->toInt();
    if (auto v = find(d, "gamma"); v && v->isDouble()) scheduler.gamma = v->toDouble();
    if (auto v = find(d, "base_lrs")) scheduler.base_lrs = as_doubles(*v, "base_lrs");
    if (auto v = find(d, "last_epoch"); v && v->isInt()) scheduler.last_epoch = v->toInt();
    if (auto v = find(d, "_last_lr")) scheduler.last_lr = as_doubles(*v, "_last_lr");
  }

  void step_scheduler() {
    scheduler.last_epoch += 1;
    const double lr = scheduler.base_lrs.at(0) *
                      std::pow(scheduler.gamma, double(scheduler.last_epoch / scheduler.step_size));
    group_options().lr(lr);
    scheduler.last_lr = {lr};
  }
};

SimRunner::SimRunner(SimRunnerOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {
  if (options_.work_dir.empty() || options_.work_dir.front() != '/') {
    throw_error(ErrorCode::kInvalidArgument,
                "SimRunner: work_dir must be absolute; got \"" + options_.work_dir + "\"");
  }
  std::filesystem::create_directories(options_.work_dir);  // as MMEngine's Runner does
  torch::set_num_threads(1);
  torch::manual_seed(static_cast<uint64_t>(options_.seed));
  impl_->seed = options_.seed;
  impl_->model =
      torch::nn::Sequential(torch::nn::Linear(4, 3), torch::nn::ReLU(), torch::nn::Linear(3, 2));
  impl_->optimizer = std::make_unique<torch::optim::SGD>(
      impl_->model->parameters(), torch::optim::SGDOptions(kBaseLr).momentum(kMomentum));
  if (options_.param_scheduler) {
    // PyTorch's scheduler constructor takes its first step: last_epoch 0, lr = base lr.
    impl_->scheduler.base_lrs = {kBaseLr};
    impl_->scheduler.last_lr = {kBaseLr};
  }
}

SimRunner::~SimRunner() = default;

void SimRunner::train_step() {
  // The batch depends on (seed, iteration) only.
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(impl_->seed) * 1000003u +
                                                     static_cast<uint64_t>(iter()) + 1u);
  torch::Tensor x = torch::randn({kBatchSize, 4}, gen);
  torch::Tensor y = torch::randn({kBatchSize, 2}, gen);
  impl_->optimizer->zero_grad();
  torch::Tensor loss = torch::mse_loss(impl_->model->forward(x), y);
  loss.backward();
  impl_->optimizer->step();
  if (options_.param_scheduler) impl_->step_scheduler();
}

GenericDict SimRunner::weights() const {
  GenericDict sd(c10::StringType::get(), c10::TensorType::get());
  for (const auto& item : impl_->model->named_parameters())
    sd.insert(item.key(), item.value().detach());
  return sd;
}

GenericDict SimRunner::checkpoint_state(bool with_optimizer, bool with_schedulers) {
  GenericDict out = str_dict();
  out.insert("state_dict", weights());
  if (with_optimizer) out.insert("optimizer", impl_->optimizer_state());
  if (with_schedulers && options_.param_scheduler) {
    GenericList schedulers(c10::AnyType::get());
    schedulers.push_back(impl_->scheduler_state());
    out.insert("param_schedulers", schedulers);
  }
  return out;
}

GenericDict SimRunner::meta_extra() const {
  GenericDict meta = str_dict();
  meta.insert("seed", options_.seed);
  meta.insert("experiment_name", options_.experiment_name);
  meta.insert("cfg", options_.cfg);
  return meta;
}

void SimRunner::load_checkpoint(const GenericDict& ckpt, bool resume) {
  // Weights, non-strict, as MMEngine's resume loads them.
  load_model_state_dict(*impl_->model, checkpoint_weights(ckpt), /*strict=*/false);
  if (!resume) return;
  restore_counters(ckpt);
  if (auto opt = find(ckpt, "optimizer"); opt && opt->isGenericDict()) {
    impl_->load_optimizer(opt->toGenericDict());
  }
  if (auto sched = find(ckpt, "param_schedulers"); sched && options_.param_scheduler) {
    if (sched->isList() && !sched->toListRef().empty() && sched->toListRef()[0].isGenericDict()) {
      impl_->load_scheduler(sched->toListRef()[0].toGenericDict());
    }
  }
}

}  // namespace ckptledger
