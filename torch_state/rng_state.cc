// The generators' state (torch_state.h): the CPU generator always, each CUDA device's when CUDA
// is available at run time (through ATen's device-generic default generator, so that a CPU build
// compiles and runs this code without CUDA).
#include <ATen/Context.h>
#include <ATen/core/Generator.h>

#include <mutex>
#include <string>

#include "ckptledger/torch_state.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

using namespace torch_state;  // NOLINT: the checked readers

int64_t cuda_devices() {
  if (!at::hasCUDA()) return 0;
  return at::detail::getCUDAHooks().getNumGPUs();
}

at::Generator generator(c10::Device device) { return at::globalContext().defaultGenerator(device); }

at::Tensor state_of(at::Generator g) {
  std::lock_guard<std::mutex> lock(g.mutex());
  return g.get_state();
}

void check_like(const at::Tensor& saved, const at::Tensor& current, const std::string& key) {
  if (saved.scalar_type() != at::kByte || saved.sizes() != current.sizes()) {
    refuse(key, "expected a uint8 tensor of shape " + shape_string(current.sizes()) + ", got " +
                    std::string(c10::toString(saved.scalar_type())) + " " +
                    shape_string(saved.sizes()));
  }
}

}  // namespace

Dict rng_state() {
  Dict out = str_dict();
  out.insert("torch", state_of(generator(c10::Device(c10::kCPU))));
  if (int64_t n = cuda_devices(); n > 0) {
    GenericList cuda(c10::TensorType::get());
    for (int64_t i = 0; i < n; ++i) {
      cuda.push_back(
          state_of(generator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)))));
    }
    out.insert("cuda", cuda);
  }
  return out;
}

void load_rng_state(const Dict& state) {
  at::Generator cpu = generator(c10::Device(c10::kCPU));
  at::Tensor saved = as_tensor(require(state, "torch", "rng_state"), "rng_state.torch");
  check_like(saved, state_of(cpu), "rng_state.torch");
  std::vector<std::pair<at::Generator, at::Tensor>> cuda;
  if (std::optional<c10::IValue> v = find(state, "cuda")) {
    std::vector<c10::IValue> list = as_list(*v, "rng_state.cuda");
    if (static_cast<int64_t>(list.size()) == cuda_devices()) {
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string key = "rng_state.cuda." + std::to_string(i);
        at::Generator g = generator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)));
        at::Tensor t = as_tensor(list[i], key);
        check_like(t, state_of(g), key);
        cuda.emplace_back(g, t);
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(cpu.mutex());
    cpu.set_state(saved);
  }
  for (auto& [g, t] : cuda) {
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(t);
  }
}

}  // namespace ckptledger
