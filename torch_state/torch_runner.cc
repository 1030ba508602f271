#include "ckptledger/torch_runner.h"

#include <filesystem>
#include <iostream>
#include <optional>
#include <utility>
#include <variant>

#include "ckptledger/error.h"
#include "ckptledger/torch_state.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

using namespace torch_state;  // NOLINT: the checked readers

constexpr const char* kReservedKeys[] = {
    "meta", "state_dict", "optimizer", "param_schedulers", "message_hub", "rng_state"};

struct StepLrEntry {
  torch::optim::StepLR* scheduler;
  std::vector<double> base_lrs;
};
using SchedulerEntry = std::variant<StepLrEntry, Stateful*>;

}  // namespace

Stateful::~Stateful() = default;

struct TorchRunner::Impl {
  std::string work_dir;
  torch::nn::Module* model;
  torch::optim::Optimizer* optimizer;
  std::vector<SchedulerEntry> schedulers;
  struct Part {
    std::string key;
    Stateful* object;
    bool optional;
  };
  std::vector<Part> statefuls;
  bool strict = true;
  bool save_rng = true;
  LogSink log = [](LogLevel level, const std::string& message) {
    std::cerr << log_level_name(level) << " " << message << "\n";
  };
  Dict meta = str_dict();
  std::optional<JobGroup> job;  // a job of several ranks (set_job)

  std::vector<double> lrs() const {
    std::vector<double> out;
    for (auto& g : optimizer->param_groups()) out.push_back(g.options().get_lr());
    return out;
  }
  // PyTorch's schedulers put "initial_lr" in every group: the first StepLR's base_lrs.
  std::vector<double> initial_lrs() const {
    for (const SchedulerEntry& s : schedulers) {
      if (auto* e = std::get_if<StepLrEntry>(&s)) return e->base_lrs;
    }
    return {};
  }
};

TorchRunner::TorchRunner(const std::string& work_dir, torch::nn::Module& model,
                         torch::optim::Optimizer& optimizer)
    : impl_(std::make_unique<Impl>()) {
  if (work_dir.empty()) throw_error(ErrorCode::kInvalidArgument, "TorchRunner: empty work_dir");
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::absolute(work_dir, ec).lexically_normal();
  if (!ec) std::filesystem::create_directories(dir, ec);
  if (ec) {
    throw_error(ErrorCode::kIOError,
                "TorchRunner: cannot create work_dir " + dir.string() + ": " + ec.message());
  }
  impl_->work_dir = dir.string();
  // "a/b/" normalizes to "a/b/": the hook wants the directory's own name.
  if (impl_->work_dir.size() > 1 && impl_->work_dir.back() == '/') impl_->work_dir.pop_back();
  impl_->model = &model;
  impl_->optimizer = &optimizer;
  optimizer_kind(optimizer);  // refuses an optimizer whose state it cannot save, now
}

TorchRunner::~TorchRunner() = default;

TorchRunner& TorchRunner::add_scheduler(torch::optim::StepLR& scheduler) {
  impl_->schedulers.emplace_back(StepLrEntry{&scheduler, impl_->lrs()});
  return *this;
}

TorchRunner& TorchRunner::add_scheduler(Stateful& scheduler) {
  impl_->schedulers.emplace_back(&scheduler);
  return *this;
}

TorchRunner& TorchRunner::add_stateful(const std::string& key, Stateful& object, bool optional) {
  for (const char* reserved : kReservedKeys) {
    if (key == reserved) {
      throw_error(ErrorCode::kInvalidArgument,
                  "TorchRunner::add_stateful: \"" + key + "\" is a key of the checkpoint itself");
    }
  }
  for (const Impl::Part& part : impl_->statefuls) {
    if (part.key == key || key.empty()) {
      throw_error(ErrorCode::kInvalidArgument,
                  "TorchRunner::add_stateful: key \"" + key + "\" is empty or taken");
    }
  }
  impl_->statefuls.push_back({key, &object, optional});
  return *this;
}

TorchRunner& TorchRunner::set_strict(bool strict) {
  impl_->strict = strict;
  return *this;
}

TorchRunner& TorchRunner::set_save_rng(bool save_rng) {
  impl_->save_rng = save_rng;
  return *this;
}

TorchRunner& TorchRunner::set_log(LogSink log) {
  impl_->log = std::move(log);
  return *this;
}

Dict& TorchRunner::meta() { return impl_->meta; }

TorchRunner& TorchRunner::set_job(const JobGroup& job) {
  if (job.world_size <= 1 || !job.group) {
    impl_->job.reset();
    return *this;
  }
  // The replicas start equal: rank 0's parameters and buffers on every rank. The job is kept
  // once that is done.
  JobGroup joined = job;
  std::vector<torch::Tensor> tensors = impl_->model->parameters();
  for (const torch::Tensor& b : impl_->model->buffers()) tensors.push_back(b);
  broadcast_from_rank0(joined, tensors);
  impl_->job = std::move(joined);
  return *this;
}

void TorchRunner::allreduce_gradients(bool average) {
  if (!impl_->job) return;
  std::vector<torch::Tensor> params;
  for (const torch::Tensor& p : impl_->model->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  if (params.empty()) return;
  // One all-reduce: the gradients (zeros where this rank has none, so that every rank sends the
  // same shapes), then per parameter the number of ranks that had a gradient.
  std::vector<torch::Tensor> buffers;
  std::vector<double> had;
  for (const torch::Tensor& p : params) {
    const torch::Tensor& g = p.grad();
    had.push_back(g.defined() ? 1 : 0);
    buffers.push_back(g.defined() ? g : torch::zeros_like(p));
  }
  buffers.push_back(torch::tensor(had).to(params.front().options().requires_grad(false)));
  allreduce_sum(*impl_->job, buffers);
  const torch::Tensor counts = buffers.back().to(torch::kCPU, torch::kFloat64).contiguous();
  for (size_t i = 0; i < params.size(); ++i) {
    if (counts.data_ptr<double>()[i] == 0) continue;  // no rank had one: it stays undefined
    torch::Tensor& g = buffers[i];
    if (average) g.div_(impl_->job->world_size);
    if (!params[i].grad().defined()) params[i].mutable_grad() = g;
  }
}

const JobGroup* TorchRunner::job() const { return impl_->job ? &*impl_->job : nullptr; }

std::string TorchRunner::work_dir() const { return impl_->work_dir; }

bool TorchRunner::has_param_schedulers() const { return !impl_->schedulers.empty(); }

Dict TorchRunner::meta_extra() const { return impl_->meta; }

Dict TorchRunner::checkpoint_state(bool with_optimizer, bool with_schedulers) {
  Impl& m = *impl_;
  Dict out = str_dict();
  out.insert("state_dict", model_state_dict(*m.model));
  if (with_optimizer) out.insert("optimizer", optimizer_state_dict(*m.optimizer, m.initial_lrs()));
  if (with_schedulers && !m.schedulers.empty()) {
    GenericList list = any_list();
    for (SchedulerEntry& s : m.schedulers) {
      if (auto* e = std::get_if<StepLrEntry>(&s)) {
        list.push_back(step_lr_state_dict(*e->scheduler, *m.optimizer, e->base_lrs));
      } else {
        list.push_back(std::get<Stateful*>(s)->state_dict());
      }
    }
    out.insert("param_schedulers", list);
  }
  if (m.save_rng) out.insert("rng_state", rng_state());
  for (const Impl::Part& part : m.statefuls) out.insert(part.key, part.object->state_dict());
  return out;
}

void TorchRunner::load_checkpoint(const Dict& ckpt, bool resume) {
  Impl& m = *impl_;
  const Dict weights = checkpoint_weights(ckpt);
  std::vector<c10::IValue> schedulers;
  if (resume) {
    // Everything a resume needs is there before anything changes.
    require(ckpt, "optimizer", "checkpoint");
    if (!m.schedulers.empty()) {
      schedulers =
          as_list(require(ckpt, "param_schedulers", "checkpoint"), "checkpoint.param_schedulers");
      if (schedulers.size() != m.schedulers.size()) {
        refuse("checkpoint.param_schedulers", std::to_string(schedulers.size()) +
                                                  " schedulers, the runner has " +
                                                  std::to_string(m.schedulers.size()));
      }
    }
    for (const Impl::Part& part : m.statefuls) {
      if (!part.optional) require(ckpt, part.key, "checkpoint");
    }
  }
  ModelLoadReport report = load_model_state_dict(*m.model, weights, m.strict);
  if (!report.clean())
    m.log(LogLevel::kWarning,
          "The model and loaded state dict do not match exactly: " + report.describe());
  if (!resume) return;
  restore_counters(ckpt);
  load_optimizer_state_dict(*m.optimizer, as_dict(ckpt.at("optimizer"), "checkpoint.optimizer"));
  for (size_t i = 0; i < m.schedulers.size(); ++i) {
    const std::string key = "checkpoint.param_schedulers." + std::to_string(i);
    Dict state = as_dict(schedulers[i], key);
    if (auto* e = std::get_if<StepLrEntry>(&m.schedulers[i])) {
      e->base_lrs = load_step_lr_state_dict(*e->scheduler, state);
    } else {
      std::get<Stateful*>(m.schedulers[i])->load_state_dict(state);
    }
  }
  for (const Impl::Part& part : m.statefuls) {
    if (std::optional<c10::IValue> v = find(ckpt, part.key)) {
      part.object->load_state_dict(as_dict(*v, "checkpoint." + part.key));
    } else {
      m.log(LogLevel::kWarning,
            "the checkpoint holds no \"" + part.key + "\": it continues from its current state");
    }
  }
  std::string parts = "weights, " + optimizer_kind(*m.optimizer) + " state";
  if (!m.schedulers.empty()) parts += ", " + std::to_string(m.schedulers.size()) + " scheduler(s)";
  for (const Impl::Part& part : m.statefuls) {
    if (ckpt.contains(part.key)) parts += ", " + part.key;
  }
  if (std::optional<c10::IValue> rng = find(ckpt, "rng_state")) {
    load_rng_state(as_dict(*rng, "checkpoint.rng_state"));
    parts += ", RNG state";
  } else if (m.save_rng) {
    m.log(LogLevel::kWarning,
          "the checkpoint holds no rng_state: the random generators continue from their current "
          "state, so randomness after the resume differs from the interrupted run's");
  }
  m.log(LogLevel::kInfo, "TorchRunner: resumed at epoch " + std::to_string(epoch()) + ", iter " +
                             std::to_string(iter()) + " (" + parts + ")");
}

}  // namespace ckptledger
