#include "catalog/sim_runner.h"

#include <cmath>
#include <filesystem>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "ledger/error.h"

namespace ckptledger {
namespace {

constexpr int64_t kBatchSize = 8;
constexpr double kBaseLr = 0.1;
constexpr double kMomentum = 0.9;

using GenericDict = c10::impl::GenericDict;
using GenericList = c10::impl::GenericList;

GenericDict str_dict() { return GenericDict(c10::StringType::get(), c10::AnyType::get()); }

GenericList double_list(const std::vector<double>& v) {
  GenericList l(c10::AnyType::get());
  for (double x : v) l.push_back(x);
  return l;
}

std::vector<double> to_doubles(const c10::IValue& v) {
  std::vector<double> out;
  if (!v.isList()) return out;
  for (const c10::IValue& x : v.toListRef())
    out.push_back(x.isInt() ? double(x.toInt()) : x.toDouble());
  return out;
}

std::optional<c10::IValue> get(const GenericDict& d, const std::string& key) {
  if (!d.contains(key)) return std::nullopt;
  return d.at(key);
}

}  // namespace

struct SimRunner::Impl {
  torch::nn::Sequential model;
  std::unique_ptr<torch::optim::SGD> optimizer;
  StepLRState scheduler;
  int64_t seed = 0;

  std::string state_key(const torch::Tensor& p) const {
    return c10::guts::to_string(p.unsafeGetTensorImpl());
  }
  torch::optim::SGDOptions& group_options() {
    return static_cast<torch::optim::SGDOptions&>(optimizer->param_groups().at(0).options());
  }

  // PyTorch's optimizer.state_dict() for one SGD param group.
  GenericDict optimizer_state() {
    GenericDict state(c10::IntType::get(), c10::AnyType::get());
    const std::vector<torch::Tensor>& params = optimizer->param_groups().at(0).params();
    GenericList param_ids(c10::AnyType::get());
    for (size_t i = 0; i < params.size(); ++i) {
      param_ids.push_back(static_cast<int64_t>(i));
      auto it = optimizer->state().find(state_key(params[i]));
      if (it == optimizer->state().end()) continue;
      const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
      if (!s.momentum_buffer().defined()) continue;
      GenericDict entry = str_dict();
      entry.insert("momentum_buffer", s.momentum_buffer());
      state.insert(static_cast<int64_t>(i), entry);
    }
    const torch::optim::SGDOptions& o = group_options();
    GenericDict group = str_dict();
    group.insert("lr", o.lr());
    group.insert("momentum", o.momentum());
    group.insert("dampening", o.dampening());
    group.insert("weight_decay", o.weight_decay());
    group.insert("nesterov", o.nesterov());
    group.insert("maximize", false);
    group.insert("foreach", c10::IValue());
    group.insert("differentiable", false);
    if (!scheduler.base_lrs.empty()) group.insert("initial_lr", scheduler.base_lrs.at(0));
    group.insert("params", param_ids);
    GenericList groups(c10::AnyType::get());
    groups.push_back(group);

    GenericDict out = str_dict();
    out.insert("state", state);
    out.insert("param_groups", groups);
    return out;
  }

  void load_optimizer(const GenericDict& sd) {
    const std::vector<torch::Tensor>& params = optimizer->param_groups().at(0).params();
    optimizer->state().clear();
    if (auto state = get(sd, "state"); state && state->isGenericDict()) {
      for (const auto& entry : state->toGenericDict()) {
        if (!entry.key().isInt() || !entry.value().isGenericDict()) continue;
        const int64_t idx = entry.key().toInt();
        if (idx < 0 || idx >= static_cast<int64_t>(params.size())) continue;
        auto buf = get(entry.value().toGenericDict(), "momentum_buffer");
        if (!buf || !buf->isTensor()) continue;
        auto s = std::make_unique<torch::optim::SGDParamState>();
        s->momentum_buffer(buf->toTensor().clone());
        optimizer->state()[state_key(params[static_cast<size_t>(idx)])] = std::move(s);
      }
    }
    if (auto groups = get(sd, "param_groups"); groups && groups->isList()) {
      const auto& list = groups->toListRef();
      if (!list.empty() && list[0].isGenericDict()) {
        if (auto lr = get(list[0].toGenericDict(), "lr"); lr && lr->isDouble()) {
          group_options().lr(lr->toDouble());
        }
      }
    }
  }

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
    if (auto v = get(d, "step_size"); v && v->isInt()) scheduler.step_size = v->toInt();
    if (auto v = get(d, "gamma"); v && v->isDouble()) scheduler.gamma = v->toDouble();
    if (auto v = get(d, "base_lrs")) scheduler.base_lrs = to_doubles(*v);
    if (auto v = get(d, "last_epoch"); v && v->isInt()) scheduler.last_epoch = v->toInt();
    if (auto v = get(d, "_last_lr")) scheduler.last_lr = to_doubles(*v);
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
  // Weights, non-strict (spec §10 step 2).
  if (auto sd = get(ckpt, "state_dict"); sd && sd->isGenericDict()) {
    const GenericDict weights_in = sd->toGenericDict();
    torch::NoGradGuard no_grad;
    for (auto& item : impl_->model->named_parameters()) {
      auto t = get(weights_in, item.key());
      if (t && t->isTensor() && t->toTensor().sizes() == item.value().sizes()) {
        item.value().copy_(t->toTensor());
      }
    }
  }
  if (!resume) return;
  restore_counters(ckpt);
  if (auto opt = get(ckpt, "optimizer"); opt && opt->isGenericDict()) {
    impl_->load_optimizer(opt->toGenericDict());
  }
  if (auto sched = get(ckpt, "param_schedulers"); sched && options_.param_scheduler) {
    if (sched->isList() && !sched->toListRef().empty() && sched->toListRef()[0].isGenericDict()) {
      impl_->load_scheduler(sched->toListRef()[0].toGenericDict());
    }
  }
}

}  // namespace ckptledger
