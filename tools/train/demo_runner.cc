#include "tools/train/demo_runner.h"

#include <cmath>
#include <filesystem>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "ckptledger/error.h"
#include "ckptledger/torch_state.h"
#include "tools/train/spiral.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

constexpr int64_t kClasses = Spiral::kClasses;
constexpr double kBaseLr = 0.1;
constexpr double kMomentum = 0.9;
constexpr double kWeightDecay = 1e-4;
constexpr double kEtaMin = 1e-3;

using namespace torch_state;  // NOLINT: str_dict, find, double_list, as_doubles

at::Generator generator(int64_t seed, uint64_t stream) {
  return at::detail::createCPUGenerator(static_cast<uint64_t>(seed) * 1000003u + stream);
}

}  // namespace

DemoSize demo_size(const std::string& name) {
  if (name == "small") return {"small", 300, 32, 8, 16, 5};
  if (name == "full") return {"full", 2000, 128, 20, 32, 12};
  throw_error(ErrorCode::kInvalidArgument,
              "demo: --size must be small or full; got \"" + name + "\"");
}

struct DemoRunner::Impl {
  DemoSize size;
  int64_t seed = 0;
  torch::Tensor x_train, y_train, x_val, y_val;
  torch::nn::Sequential model;
  std::unique_ptr<torch::optim::SGD> optimizer;
  // CosineAnnealingLR(T_max = epochs, eta_min), PyTorch's state_dict keys.
  int64_t t_max = 1;
  double eta_min = kEtaMin;
  std::vector<double> base_lrs{kBaseLr};
  int64_t last_epoch = 0;
  std::vector<double> last_lr{kBaseLr};
  // The batch order of the epoch `perm_epoch`.
  int64_t perm_epoch = -1;
  torch::Tensor perm;

  torch::optim::SGDOptions& group_options() {
    return static_cast<torch::optim::SGDOptions&>(optimizer->param_groups().at(0).options());
  }

  void make_data() {
    Spiral data = make_spiral(seed, size.points_per_class);
    x_train = data.x_train;
    y_train = data.y_train;
    x_val = data.x_val;
    y_val = data.y_val;
  }

  double lr_at(int64_t epoch) const {
    const double pi = std::acos(-1.0);
    return eta_min +
           (base_lrs.at(0) - eta_min) * (1.0 + std::cos(pi * double(epoch) / double(t_max))) / 2.0;
  }

  void step_scheduler() {
    last_epoch += 1;
    const double lr = lr_at(last_epoch);
    group_options().lr(lr);
    last_lr = {lr};
  }

  GenericDict optimizer_state() { return optimizer_state_dict(*optimizer, {base_lrs.at(0)}); }
  void load_optimizer(const GenericDict& sd) { load_optimizer_state_dict(*optimizer, sd); }

  GenericDict scheduler_state() const {
    GenericDict d = str_dict();
    d.insert("T_max", t_max);
    d.insert("eta_min", eta_min);
    d.insert("base_lrs", double_list(base_lrs));
    d.insert("last_epoch", last_epoch);
    d.insert("_step_count", last_epoch + 1);
    d.insert("_last_lr", double_list(last_lr));
    return d;
  }

  void load_scheduler(const GenericDict& d) {
    if (auto v = find(d, "T_max"); v && v->isInt()) t_max = v->toInt();
    if (auto v = find(d, "eta_min"); v && v->isDouble()) eta_min = v->toDouble();
    if (auto v = find(d, "base_lrs")) base_lrs = as_doubles(*v, "base_lrs");
    if (auto v = find(d, "last_epoch"); v && v->isInt()) last_epoch = v->toInt();
    if (auto v = find(d, "_last_lr")) last_lr = as_doubles(*v, "_last_lr");
  }
};

DemoRunner::DemoRunner(std::string work_dir, const DemoSize& size, int64_t seed)
    : work_dir_(std::move(work_dir)), impl_(std::make_unique<Impl>()) {
  if (work_dir_.empty() || work_dir_.front() != '/') {
    throw_error(ErrorCode::kInvalidArgument,
                "DemoRunner: work_dir must be absolute; got \"" + work_dir_ + "\"");
  }
  std::filesystem::create_directories(work_dir_);
  torch::set_num_threads(1);
  Impl& m = *impl_;
  m.size = size;
  m.seed = seed;
  m.t_max = size.epochs;
  m.make_data();
  torch::manual_seed(static_cast<uint64_t>(seed));
  m.model = torch::nn::Sequential(torch::nn::Linear(2, size.hidden), torch::nn::ReLU(),
                                  torch::nn::Linear(size.hidden, size.hidden), torch::nn::ReLU(),
                                  torch::nn::Linear(size.hidden, kClasses));
  m.optimizer = std::make_unique<torch::optim::SGD>(
      m.model->parameters(),
      torch::optim::SGDOptions(kBaseLr).momentum(kMomentum).nesterov(true).weight_decay(
          kWeightDecay));
}

DemoRunner::~DemoRunner() = default;

int64_t DemoRunner::iters_per_epoch() const {
  return (impl_->x_train.size(0) + impl_->size.batch_size - 1) / impl_->size.batch_size;
}
int64_t DemoRunner::train_count() const { return impl_->x_train.size(0); }
int64_t DemoRunner::val_count() const { return impl_->x_val.size(0); }
double DemoRunner::lr() const {
  return static_cast<torch::optim::SGDOptions&>(impl_->optimizer->param_groups().at(0).options())
      .lr();
}

std::string DemoRunner::describe() const {
  const DemoSize& s = impl_->size;
  return fmt::format(
      "3-arm spiral, {} train / {} val points; MLP 2-{}-{}-3; SGD (momentum {}, Nesterov, "
      "weight decay {}), cosine LR {} -> {}; {} epochs x {} batches of {}",
      train_count(), val_count(), s.hidden, s.hidden, kMomentum, kWeightDecay, kBaseLr, kEtaMin,
      s.epochs, iters_per_epoch(), s.batch_size);
}

double DemoRunner::train_step(int64_t batch_idx) {
  Impl& m = *impl_;
  if (m.perm_epoch != epoch()) {
    at::Generator gen = generator(m.seed, static_cast<uint64_t>(epoch()) + 1);
    m.perm = torch::randperm(m.x_train.size(0), gen);
    m.perm_epoch = epoch();
  }
  const int64_t begin = batch_idx * m.size.batch_size;
  const int64_t end = std::min(begin + m.size.batch_size, m.x_train.size(0));
  torch::Tensor idx = m.perm.slice(0, begin, end);
  torch::Tensor x = m.x_train.index_select(0, idx);
  torch::Tensor y = m.y_train.index_select(0, idx);
  m.model->train();
  m.optimizer->zero_grad();
  torch::Tensor loss = torch::nn::functional::cross_entropy(m.model->forward(x), y);
  loss.backward();
  m.optimizer->step();
  if (batch_idx + 1 == iters_per_epoch()) m.step_scheduler();
  return loss.item<double>();
}

Metrics DemoRunner::validate() {
  Impl& m = *impl_;
  torch::NoGradGuard no_grad;
  m.model->eval();
  torch::Tensor logits = m.model->forward(m.x_val);
  const double loss = torch::nn::functional::cross_entropy(logits, m.y_val).item<double>();
  const double acc = logits.argmax(1).eq(m.y_val).to(torch::kFloat64).mean().item<double>();
  return {{"acc", acc}, {"loss", loss}};
}

c10::impl::GenericDict DemoRunner::checkpoint_state(bool with_optimizer, bool with_schedulers) {
  GenericDict out = str_dict();
  GenericDict sd(c10::StringType::get(), c10::TensorType::get());
  for (const auto& item : impl_->model->named_parameters())
    sd.insert(item.key(), item.value().detach());
  out.insert("state_dict", sd);
  if (with_optimizer) out.insert("optimizer", impl_->optimizer_state());
  if (with_schedulers) {
    GenericList schedulers(c10::AnyType::get());
    schedulers.push_back(impl_->scheduler_state());
    out.insert("param_schedulers", schedulers);
  }
  return out;
}

c10::impl::GenericDict DemoRunner::meta_extra() const {
  GenericDict meta = str_dict();
  meta.insert("seed", impl_->seed);
  meta.insert("experiment_name", std::string("ckptledger-demo-") + impl_->size.name);
  meta.insert("dataset", std::string("spiral3"));
  return meta;
}

void DemoRunner::load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) {
  load_model_state_dict(*impl_->model, checkpoint_weights(ckpt), /*strict=*/false);
  if (!resume) return;
  restore_counters(ckpt);
  if (auto opt = find(ckpt, "optimizer"); opt && opt->isGenericDict()) {
    impl_->load_optimizer(opt->toGenericDict());
  }
  if (auto sched = find(ckpt, "param_schedulers"); sched && sched->isList()) {
    const auto& list = sched->toListRef();
    if (!list.empty() && list[0].isGenericDict()) impl_->load_scheduler(list[0].toGenericDict());
  }
}

}  // namespace ckptledger
