// Torch-native state (include/ckptledger/torch_state.h, torch_runner.h): PyTorch's layout for
// modules, every torch::optim optimizer, StepLR and the RNG; bitwise resume through a checkpoint
// file's bytes; refusals that name the key; Python both ways.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ckptledger/error.h"
#include "ckptledger/torch_runner.h"
#include "ckptledger/torch_state.h"
#include "hook/checkpoint_format.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// fc1 -> bn -> relu -> dropout -> fc2: parameters, buffers (bn's running stats and its int64
// counter) and randomness (dropout) in one small net.
struct NetImpl : torch::nn::Module {
  NetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(4, 8))),
        bn(register_module("bn", torch::nn::BatchNorm1d(8))),
        drop(register_module("drop", torch::nn::Dropout(0.25))),
        fc2(register_module("fc2", torch::nn::Linear(8, 3))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(drop(torch::relu(bn(fc1(x))))); }
  torch::nn::Linear fc1;
  torch::nn::BatchNorm1d bn;
  torch::nn::Dropout drop;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Net);

// Two param groups (fc1 + bn, fc2 at half the learning rate), as the Python side builds them.
std::vector<torch::optim::OptimizerParamGroup> groups(Net& net, double lr,
                                                      const torch::optim::OptimizerOptions& o) {
  std::vector<torch::Tensor> first = net->fc1->parameters();
  for (const auto& p : net->bn->parameters()) first.push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> g;
  g.emplace_back(first, o.clone());
  auto second = o.clone();
  second->set_lr(lr / 2);
  g.emplace_back(net->fc2->parameters(), std::move(second));
  return g;
}

struct Kind {
  std::string name;    // the test's label
  std::string python;  // torch.optim class
  std::function<std::unique_ptr<torch::optim::Optimizer>(Net&)> make;
};

std::vector<Kind> kinds() {
  using namespace torch::optim;  // NOLINT
  return {
      {"SGD", "SGD",
       [](Net& n) {
         auto o = SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(1e-4);
         return std::make_unique<SGD>(groups(n, 0.05, o), o);
       }},
      {"Adam", "Adam",
       [](Net& n) {
         auto o = AdamOptions(0.01);
         return std::make_unique<Adam>(groups(n, 0.01, o), o);
       }},
      {"AdamAmsgrad", "Adam",
       [](Net& n) {
         auto o = AdamOptions(0.01).amsgrad(true);
         return std::make_unique<Adam>(groups(n, 0.01, o), o);
       }},
      {"AdamW", "AdamW",
       [](Net& n) {
         auto o = AdamWOptions(0.01).weight_decay(0.05);
         return std::make_unique<AdamW>(groups(n, 0.01, o), o);
       }},
      {"AdamWAmsgrad", "AdamW",
       [](Net& n) {
         auto o = AdamWOptions(0.01).amsgrad(true);
         return std::make_unique<AdamW>(groups(n, 0.01, o), o);
       }},
      {"RMSprop", "RMSprop",
       [](Net& n) {
         auto o = RMSpropOptions(0.01).momentum(0.5).centered(true);
         return std::make_unique<RMSprop>(groups(n, 0.01, o), o);
       }},
      {"Adagrad", "Adagrad",
       [](Net& n) {
         auto o = AdagradOptions(0.1);
         return std::make_unique<Adagrad>(groups(n, 0.1, o), o);
       }},
      {"LBFGS", "LBFGS",
       [](Net& n) {
         auto o = LBFGSOptions(0.5).history_size(4).max_iter(3);
         return std::make_unique<LBFGS>(n->parameters(), o);
       }},
  };
}

// One training step: a batch and dropout masks from the default generator.
void train_step(Net& net, torch::optim::Optimizer& opt) {
  net->train();
  torch::Tensor x = torch::randn({16, 4});
  torch::Tensor y = torch::randint(0, 3, {16});
  opt.step([&] {
    opt.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(x), y);
    loss.backward();
    return loss;
  });
}

bool bitwise_equal(Net& a, Net& b) {
  Dict sa = model_state_dict(*a), sb = model_state_dict(*b);
  if (sa.size() != sb.size()) return false;
  for (const auto& kv : sa) {
    if (!torch::equal(kv.value().toTensor(), sb.at(kv.key()).toTensor())) return false;
  }
  return true;
}

// Through a checkpoint file's bytes, as a resume sees it.
Dict through_bytes(const Dict& d) {
  std::string bytes;
  write_checkpoint(c10::IValue(d),
                   [&](const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); });
  return read_checkpoint_bytes(bytes).toGenericDict();
}

Dict snapshot(Net& net, torch::optim::Optimizer& opt) {
  Dict d = make_dict();
  d.insert("state_dict", model_state_dict(*net));
  d.insert("optimizer", optimizer_state_dict(opt));
  d.insert("rng_state", rng_state());
  return through_bytes(d);
}

void restore(Net& net, torch::optim::Optimizer& opt, const Dict& ckpt) {
  load_model_state_dict(*net, ckpt.at("state_dict").toGenericDict());
  load_optimizer_state_dict(opt, ckpt.at("optimizer").toGenericDict());
  load_rng_state(ckpt.at("rng_state").toGenericDict());
}

// Trains 4 steps, checkpoints, trains 4 more (the reference); a fresh net and optimizer restored
// from the checkpoint (after `mutate`) trains the same 4 steps. True when they end bitwise equal.
bool resumes_bitwise(const Kind& kind, const std::function<void(Dict&)>& mutate = {}) {
  torch::manual_seed(1);
  Net a;
  auto opt_a = kind.make(a);
  for (int i = 0; i < 4; ++i) train_step(a, *opt_a);
  Dict ckpt = snapshot(a, *opt_a);
  for (int i = 0; i < 4; ++i) train_step(a, *opt_a);

  torch::manual_seed(99);  // another initialisation: everything must come from the checkpoint
  Net b;
  auto opt_b = kind.make(b);
  train_step(b, *opt_b);  // and some state of its own that the restore must replace
  if (mutate) mutate(ckpt);
  restore(b, *opt_b, ckpt);
  for (int i = 0; i < 4; ++i) train_step(b, *opt_b);
  return bitwise_equal(a, b);
}

// A mutated checkpoint is caught: the load refuses it (naming `key`, when given) or the resumed
// training is not bitwise the uninterrupted one.
bool detected(const Kind& kind, const std::function<void(Dict&)>& mutate,
              const std::string& key = "") {
  try {
    return !resumes_bitwise(kind, mutate);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    return true;
  }
}

class EveryOptimizer : public ::testing::TestWithParam<Kind> {};

TEST_P(EveryOptimizer, ResumedTrainingWithDropoutIsBitwiseEqualToUninterrupted) {
  EXPECT_TRUE(resumes_bitwise(GetParam()));
}

TEST_P(EveryOptimizer, DroppingAnyStateKeyBreaksTheResume) {
  // Every key of every saved state entry, removed in turn: the load refuses it or the resumed
  // training diverges. Never a resume that passes for exact.
  torch::manual_seed(1);
  Net net;
  auto opt = GetParam().make(net);
  for (int i = 0; i < 4; ++i) train_step(net, *opt);
  Dict state = optimizer_state_dict(*opt).at("state").toGenericDict();
  ASSERT_GT(state.size(), 0u);
  std::vector<std::string> keys;
  for (const auto& kv : state.begin()->value().toGenericDict()) {
    keys.push_back(kv.key().toStringRef());
  }
  for (const std::string& key : keys) {
    // LBFGS's "al" is scratch space, recomputed before each use: PyTorch saves it, nothing reads
    // it.
    if (GetParam().python == "LBFGS" && key == "al") continue;
    EXPECT_TRUE(detected(
        GetParam(),
        [&](Dict& ckpt) {
          Dict st = ckpt.at("optimizer").toGenericDict().at("state").toGenericDict();
          for (const auto& kv : st) (void)kv.value().toGenericDict().erase(key);
        },
        "." + key))
        << "dropping " << key << " went unnoticed";
  }
}

TEST_P(EveryOptimizer, DroppingAParametersWholeStateIsCaught) {
  EXPECT_TRUE(detected(GetParam(), [](Dict& ckpt) {
    Dict st = ckpt.at("optimizer").toGenericDict().at("state").toGenericDict();
    (void)st.erase(st.begin()->key());
  }));
}

TEST_P(EveryOptimizer, DroppingTheRngStateDivergesUnderDropout) {
  EXPECT_FALSE(resumes_bitwise(GetParam(), [](Dict& ckpt) {
    // The generator as it is at the restore instead of as it was at the save.
    ckpt.insert_or_assign("rng_state", rng_state());
  }));
}

TEST_P(EveryOptimizer, WritesPyTorchsLayoutWithParamIndicesAcrossGroups) {
  torch::manual_seed(1);
  Net net;
  auto opt = GetParam().make(net);
  for (int i = 0; i < 2; ++i) train_step(net, *opt);
  Dict sd = optimizer_state_dict(*opt);
  EXPECT_EQ(optimizer_kind(*opt), GetParam().python);
  const auto& param_groups = sd.at("param_groups").toListRef();
  int64_t next = 0;
  for (const auto& g : param_groups) {
    for (const auto& id : g.toGenericDict().at("params").toListRef()) EXPECT_EQ(id.toInt(), next++);
  }
  EXPECT_EQ(next, static_cast<int64_t>(net->parameters().size()));
  if (GetParam().python == "LBFGS") {
    EXPECT_EQ(sd.at("state").toGenericDict().size(), 1u);  // one state, under parameter 0
  }
}

INSTANTIATE_TEST_SUITE_P(TorchState, EveryOptimizer, ::testing::ValuesIn(kinds()),
                         [](const auto& p) { return p.param.name; });

Kind kind_named(const std::string& name) {
  for (const Kind& k : kinds()) {
    if (k.name == name) return k;
  }
  throw std::runtime_error("no kind " + name);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(OptimizerStateLoad, AnSgdStateLoadedIntoAdamIsRefusedNamingTheKeyAndChangesNothing) {
  torch::manual_seed(1);
  Net net;
  auto sgd = kind_named("SGD").make(net);
  train_step(net, *sgd);
  Dict sgd_state = through_bytes(optimizer_state_dict(*sgd));
  auto adam = kind_named("Adam").make(net);
  train_step(net, *adam);
  const Dict before = through_bytes(optimizer_state_dict(*adam));
  const std::string what = error_of([&] { load_optimizer_state_dict(*adam, sgd_state); });
  EXPECT_NE(what.find("optimizer.param_groups.0.betas"), std::string::npos) << what;
  // Without the group's options to trip on, the state's own keys are named.
  Dict groups_fixed = sgd_state.copy();
  groups_fixed.insert_or_assign("param_groups", optimizer_state_dict(*adam).at("param_groups"));
  const std::string what2 = error_of([&] { load_optimizer_state_dict(*adam, groups_fixed); });
  EXPECT_NE(what2.find("optimizer.state.0.momentum_buffer"), std::string::npos) << what2;
  // Nothing changed: the state and the options are those of before.
  const Dict after = through_bytes(optimizer_state_dict(*adam));
  const Dict sb = before.at("state").toGenericDict(), sa = after.at("state").toGenericDict();
  ASSERT_EQ(sb.size(), sa.size());
  for (const auto& kv : sb) {
    for (const auto& e : kv.value().toGenericDict()) {
      EXPECT_TRUE(torch::equal(e.value().toTensor(),
                               sa.at(kv.key()).toGenericDict().at(e.key()).toTensor()));
    }
  }
}

TEST(OptimizerStateLoad, OtherGroupCountsSizesAndShapesAreRefusedNamingTheKey) {
  torch::manual_seed(1);
  Net net;
  auto adam = kind_named("Adam").make(net);
  train_step(net, *adam);
  const Dict good = through_bytes(optimizer_state_dict(*adam));

  Dict one_group = good.copy();
  c10::impl::GenericList l(c10::AnyType::get());
  l.push_back(good.at("param_groups").toListRef()[0]);
  one_group.insert_or_assign("param_groups", l);
  EXPECT_NE(error_of([&] {
              load_optimizer_state_dict(*adam, one_group);
            }).find("optimizer.param_groups: 1 groups, the Adam has 2"),
            std::string::npos);

  // A model with a wider first layer: same groups and counts, other shapes.
  torch::manual_seed(1);
  auto wide = torch::nn::Linear(5, 8);
  std::vector<torch::Tensor> first = wide->parameters();
  Net net2;
  for (const auto& p : net2->bn->parameters()) first.push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> g;
  g.emplace_back(first, std::make_unique<torch::optim::AdamOptions>(0.01));
  g.emplace_back(net2->fc2->parameters(), std::make_unique<torch::optim::AdamOptions>(0.01));
  torch::optim::Adam other(g, torch::optim::AdamOptions(0.01));
  const std::string what = error_of([&] { load_optimizer_state_dict(other, good); });
  EXPECT_NE(what.find("optimizer.state.0.exp_avg: shape [8, 4], the parameter's is [8, 5]"),
            std::string::npos)
      << what;

  // Another group size: fc2's two tensors in a group of one.
  std::vector<torch::optim::OptimizerParamGroup> g3;
  std::vector<torch::Tensor> all = net2->parameters();
  g3.emplace_back(std::vector<torch::Tensor>(all.begin(), all.end() - 1),
                  std::make_unique<torch::optim::AdamOptions>(0.01));
  g3.emplace_back(std::vector<torch::Tensor>{all.back()},
                  std::make_unique<torch::optim::AdamOptions>(0.01));
  torch::optim::Adam regrouped(g3, torch::optim::AdamOptions(0.01));
  EXPECT_NE(error_of([&] {
              load_optimizer_state_dict(regrouped, good);
            }).find("optimizer.param_groups.0.params: 4 parameters, the group has 5"),
            std::string::npos);
}

TEST(OptimizerStateLoad, PyTorchOptionsLibtorchCannotHonourAreRefused) {
  torch::manual_seed(1);
  Net net;
  auto adam = kind_named("Adam").make(net);
  Dict sd = through_bytes(optimizer_state_dict(*adam));
  sd.at("param_groups").toListRef()[1].toGenericDict().insert_or_assign("maximize", true);
  EXPECT_NE(error_of([&] {
              load_optimizer_state_dict(*adam, sd);
            }).find("optimizer.param_groups.1.maximize: True is not supported by libtorch's Adam"),
            std::string::npos);
}

class CustomOptimizer : public torch::optim::SGD {
 public:
  using SGD::SGD;
};

TEST(OptimizerStateLoad, UnknownOptimizersAreRefusedUpFront) {
  struct Opaque : torch::optim::OptimizerCloneableOptions<Opaque> {
    double get_lr() const override { return 0.1; }
  };
  class MyOptimizer : public torch::optim::Optimizer {
   public:
    explicit MyOptimizer(std::vector<torch::Tensor> p)
        : Optimizer({torch::optim::OptimizerParamGroup(std::move(p))}, std::make_unique<Opaque>()) {
    }
    torch::Tensor step(LossClosure) override { return {}; }
  };
  Net net;
  MyOptimizer mine(net->parameters());
  const std::string what = error_of([&] { TorchRunner runner("/tmp/ckpt-unused", *net, mine); });
  EXPECT_NE(what.find("is not supported (supported: SGD, Adam, AdamW"), std::string::npos) << what;
  // A subclass of a supported optimizer is that optimizer.
  CustomOptimizer sub(net->parameters(), torch::optim::SGDOptions(0.1));
  EXPECT_EQ(optimizer_kind(sub), "SGD");
}

// ---- model
// ----------------------------------------------------------------------------------------

TEST(ModelState, HoldsParametersThenBuffersUnderPyTorchsDottedNames) {
  Net net;
  std::vector<std::string> keys;
  for (const auto& kv : model_state_dict(*net)) keys.push_back(kv.key().toStringRef());
  EXPECT_EQ(keys, (std::vector<std::string>{"fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                                            "bn.running_mean", "bn.running_var",
                                            "bn.num_batches_tracked", "fc2.weight", "fc2.bias"}));
}

TEST(ModelState, StrictLoadListsMissingUnexpectedAndMismatchedAndCopiesNothing) {
  torch::manual_seed(1);
  Net a, b;
  Dict sd = model_state_dict(*a).copy();
  (void)sd.erase("fc2.bias");
  sd.insert("head.weight", torch::zeros({2}));
  sd.insert_or_assign("fc1.weight", torch::zeros({8, 5}));
  const torch::Tensor before = b->fc2->weight.clone();
  const std::string what = error_of([&] { load_model_state_dict(*b, sd); });
  EXPECT_NE(what.find("missing keys in source state_dict: fc2.bias"), std::string::npos) << what;
  EXPECT_NE(what.find("unexpected key in source state_dict: head.weight"), std::string::npos);
  EXPECT_NE(what.find("size mismatch: fc1.weight: checkpoint [8, 5], model [8, 4]"),
            std::string::npos);
  EXPECT_TRUE(torch::equal(before, b->fc2->weight));

  ModelLoadReport r = load_model_state_dict(*b, sd, /*strict=*/false);
  EXPECT_EQ(r.missing, std::vector<std::string>{"fc2.bias"});
  EXPECT_TRUE(torch::equal(a->fc2->weight, b->fc2->weight));  // what fits is loaded
  EXPECT_FALSE(torch::equal(a->fc1->weight, b->fc1->weight));
}

TEST(ModelState, CheckpointWeightsFindStateDictModelOrBareDictWithoutTheDdpPrefix) {
  Net net;
  Dict bare = model_state_dict(*net);
  Dict ddp(c10::StringType::get(), c10::AnyType::get());
  for (const auto& kv : bare) ddp.insert("module." + kv.key().toStringRef(), kv.value());
  for (const char* key : {"state_dict", "model"}) {
    Dict ckpt = make_dict();
    ckpt.insert(key, ddp);
    ckpt.insert("meta", make_dict());
    Dict w = checkpoint_weights(ckpt);
    EXPECT_EQ(w.size(), bare.size()) << key;
    EXPECT_TRUE(w.contains("fc1.weight")) << key;
  }
  EXPECT_TRUE(checkpoint_weights(ddp).contains("bn.running_mean"));
  EXPECT_TRUE(checkpoint_weights(bare).contains("fc2.bias"));
}

// ---- StepLR
// ---------------------------------------------------------------------------------------

TEST(StepLrState, ResumedSchedulerContinuesTheSameLearningRates) {
  Net net;
  torch::optim::SGD a(net->parameters(), torch::optim::SGDOptions(0.8));
  torch::optim::StepLR sa(a, 3, 0.5);
  for (int i = 0; i < 4; ++i) sa.step();
  Dict saved = through_bytes(step_lr_state_dict(sa, a, {0.8}));
  EXPECT_EQ(saved.at("last_epoch").toInt(), 3);
  EXPECT_EQ(saved.at("_step_count").toInt(), 4);
  const double lr_at_save = a.param_groups()[0].options().get_lr();

  Net net2;
  torch::optim::SGD b(net2->parameters(), torch::optim::SGDOptions(lr_at_save));
  torch::optim::StepLR sb(b, 3, 0.5);
  EXPECT_EQ(load_step_lr_state_dict(sb, saved), std::vector<double>{0.8});
  for (int i = 0; i < 7; ++i) {
    sa.step();
    sb.step();
    EXPECT_EQ(a.param_groups()[0].options().get_lr(), b.param_groups()[0].options().get_lr()) << i;
  }
  torch::optim::StepLR other(b, 4, 0.5);
  EXPECT_NE(error_of([&] {
              load_step_lr_state_dict(other, saved);
            }).find("param_schedulers.StepLR.step_size: 3 in the checkpoint, 4 in the scheduler"),
            std::string::npos);
}

// ---- TorchRunner
// -----------------------------------------------------------------------------------

struct Counter : Stateful {
  int64_t n = 0;
  Dict state_dict() override {
    Dict d = make_dict();
    d.insert("n", n);
    return d;
  }
  void load_state_dict(const Dict& d) override { n = d.at("n").toInt(); }
};

TEST(TorchRunner, CheckpointHoldsEveryPartAndResumeRestoresThem) {
  const fs::path dir = fs::temp_directory_path() / "ckpt-torch-runner-test";
  fs::remove_all(dir);
  torch::manual_seed(3);
  Net net;
  torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(0.02));
  torch::optim::StepLR sched(opt, 2, 0.5);
  Counter counter;
  TorchRunner runner(dir.string(), *net, opt);
  runner.add_scheduler(sched).add_stateful("loader", counter);
  runner.meta().insert("seed", int64_t{3});
  for (int i = 0; i < 5; ++i) {
    train_step(net, opt);
    sched.step();
    ++counter.n;
  }
  runner.set_counters(0, 5);
  Dict ckpt = through_bytes(runner.checkpoint_state(true, true));
  std::vector<std::string> keys;
  for (const auto& kv : ckpt) keys.push_back(kv.key().toStringRef());
  EXPECT_EQ(keys, (std::vector<std::string>{"state_dict", "optimizer", "param_schedulers",
                                            "rng_state", "loader"}));
  EXPECT_EQ(ckpt.at("optimizer")
                .toGenericDict()
                .at("param_groups")
                .toListRef()[0]
                .toGenericDict()
                .at("initial_lr")
                .toDouble(),
            0.02);
  Dict meta = make_dict();
  meta.insert("epoch", int64_t{0});
  meta.insert("iter", int64_t{5});
  ckpt.insert("meta", meta);
  for (int i = 0; i < 3; ++i) {
    train_step(net, opt);
    sched.step();
  }

  torch::manual_seed(11);
  Net net2;
  torch::optim::AdamW opt2(net2->parameters(), torch::optim::AdamWOptions(0.02));
  torch::optim::StepLR sched2(opt2, 2, 0.5);
  Counter counter2;
  TorchRunner runner2(dir.string(), *net2, opt2);
  runner2.add_scheduler(sched2).add_stateful("loader", counter2);
  runner2.load_checkpoint(ckpt, /*resume=*/true);
  EXPECT_EQ(runner2.iter(), 5);
  EXPECT_EQ(counter2.n, 5);
  for (int i = 0; i < 3; ++i) {
    train_step(net2, opt2);
    sched2.step();
  }
  EXPECT_TRUE(bitwise_equal(net, net2));
  EXPECT_EQ(opt.param_groups()[0].options().get_lr(), opt2.param_groups()[0].options().get_lr());
  fs::remove_all(dir);
}

TEST(TorchRunner, RefusesReservedKeysAndAResumeMissingARegisteredPart) {
  Net net;
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
  Counter c;
  TorchRunner runner(fs::temp_directory_path() / "ckpt-torch-runner-keys", *net, opt);
  EXPECT_NE(error_of([&] { runner.add_stateful("optimizer", c); }).find("\"optimizer\""),
            std::string::npos);
  runner.add_stateful("loader", c);
  EXPECT_NE(error_of([&] { runner.add_stateful("loader", c); }).find("taken"), std::string::npos);
  Dict ckpt = make_dict();
  ckpt.insert("state_dict", model_state_dict(*net));
  ckpt.insert("optimizer", optimizer_state_dict(opt));
  const torch::Tensor before = net->fc1->weight.clone();
  EXPECT_NE(
      error_of([&] { runner.load_checkpoint(ckpt, true); }).find("checkpoint.loader: missing"),
      std::string::npos);
  // Weights-only (load_from) needs neither the optimizer nor the Stateful.
  Dict weights_only = make_dict();
  weights_only.insert("state_dict", model_state_dict(*net));
  runner.load_checkpoint(weights_only, false);
  EXPECT_TRUE(torch::equal(before, net->fc1->weight));
}

// ---- Python both ways
// -------------------------------------------------------------------------------

json run_python(const std::string& args) {
  const std::string cmd =
      std::string(CKPT_PYTHON3) + " '" + CKPT_TORCH_STATE_PY + "' " + args + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed: " + cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  const int rc = ::pclose(pipe);
  if (rc != 0) throw std::runtime_error("python failed (" + std::to_string(rc) + "): " + out);
  return json::parse(out.substr(out.rfind("\n{") == std::string::npos ? 0 : out.rfind("\n{") + 1));
}

void write_file(const std::string& path, const Dict& d) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  write_checkpoint(c10::IValue(d), [&](const void* p, size_t n) { std::fwrite(p, 1, n, f); });
  std::fclose(f);
}

class PythonLoads : public ::testing::TestWithParam<Kind> {};

TEST_P(PythonLoads, OurCheckpointIntoTorchOptimAndStepLrWithTheSameTensorsAndLayout) {
  const Kind& kind = GetParam();
  const std::string path = (fs::temp_directory_path() / ("ckpt-torch-state-" + kind.name + ".pth"));
  torch::manual_seed(5);
  Net net;
  auto opt = kind.make(net);
  torch::optim::StepLR sched(*opt, 2, 0.5);
  std::vector<double> base;
  for (auto& g : opt->param_groups()) base.push_back(g.options().get_lr());
  for (int i = 0; i < 3; ++i) {
    train_step(net, *opt);
    sched.step();
  }
  Dict ckpt = make_dict();
  ckpt.insert("state_dict", model_state_dict(*net));
  ckpt.insert("optimizer", optimizer_state_dict(*opt, base));
  c10::impl::GenericList schedulers(c10::AnyType::get());
  schedulers.push_back(step_lr_state_dict(sched, *opt, base));
  ckpt.insert("param_schedulers", schedulers);
  c10::impl::GenericList names(c10::StringType::get());
  for (const auto& p : net->named_parameters()) names.push_back(p.key());
  ckpt.insert("test_param_names", names);
  write_file(path, ckpt);

  const json py = run_python("check '" + path + "' " + kind.python + " 5");
  EXPECT_TRUE(py["state_equal"].get<bool>());
  EXPECT_EQ(py["layout"]["ours"], py["layout"]["python"]) << py["layout"].dump();
  // The learning rates PyTorch's StepLR gives from our state are libtorch's own.
  for (size_t i = 0; i < 5; ++i) {
    sched.step();
    for (size_t g = 0; g < opt->param_groups().size(); ++g) {
      EXPECT_EQ(py["lrs"][i][g].get<double>(), opt->param_groups()[g].options().get_lr())
          << "step " << i << " group " << g;
    }
  }
  fs::remove(path);
}

INSTANTIATE_TEST_SUITE_P(TorchState, PythonLoads, ::testing::ValuesIn(kinds()),
                         [](const auto& p) { return p.param.name; });

class PythonWrites : public ::testing::TestWithParam<std::string> {};

TEST_P(PythonWrites, ItsCheckpointResumesHereWithTheOptimizerTensorsBitwiseEqual) {
  const std::string kind = GetParam();
  const fs::path dir = fs::temp_directory_path() / ("ckpt-torch-state-py-" + kind);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "from_python.pth").string();
  const json py = run_python("write '" + path + "' " + kind + " 3");

  torch::manual_seed(0);
  Net net;
  auto opt = kind_named(kind).make(net);
  torch::optim::StepLR sched(*opt, 2, 0.5);
  TorchRunner runner(dir.string(), *net, *opt);
  runner.add_scheduler(sched).set_log([](LogLevel, const std::string&) {});
  const Dict file = read_checkpoint(path).toGenericDict();
  runner.load_checkpoint(file, /*resume=*/true);
  EXPECT_EQ(runner.iter(), 3);

  const Dict theirs = file.at("optimizer").toGenericDict().at("state").toGenericDict();
  const Dict ours = optimizer_state_dict(*opt).at("state").toGenericDict();
  ASSERT_EQ(ours.size(), theirs.size());
  size_t tensors = 0;
  for (const auto& kv : theirs) {
    for (const auto& e : kv.value().toGenericDict()) {
      const c10::IValue mine = ours.at(kv.key()).toGenericDict().at(e.key());
      if (e.value().isTensor()) {
        EXPECT_TRUE(torch::equal(e.value().toTensor(), mine.toTensor()))
            << kv.key().toInt() << "." << e.key().toStringRef();
        ++tensors;
      }
    }
  }
  EXPECT_GT(tensors, 0u);
  const Dict weights = file.at("state_dict").toGenericDict();
  for (const auto& kv : model_state_dict(*net)) {
    EXPECT_TRUE(torch::equal(kv.value().toTensor(), weights.at(kv.key()).toTensor()))
        << kv.key().toStringRef();
  }
  for (size_t i = 0; i < 5; ++i) {
    sched.step();
    for (size_t g = 0; g < opt->param_groups().size(); ++g) {
      EXPECT_EQ(py["lrs"][i][g].get<double>(), opt->param_groups()[g].options().get_lr())
          << "step " << i << " group " << g;
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(TorchState, PythonWrites, ::testing::Values("AdamW", "SGD", "Adam"));

}  // namespace
}  // namespace ckptledger
