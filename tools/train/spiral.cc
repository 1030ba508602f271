#include "tools/train/spiral.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <vector>

namespace ckptledger {

Spiral make_spiral(int64_t seed, int64_t points_per_class) {
  constexpr double kNoise = 0.4;
  // Its own generator: the data never depends on (or moves) torch's default one.
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed) * 1000003u);
  // Arm c, point i: r = i / (n - 1), t = 4 c + 4 r + noise.
  const int64_t n = points_per_class;
  std::vector<torch::Tensor> xs, ys;
  for (int64_t c = 0; c < Spiral::kClasses; ++c) {
    torch::Tensor r = torch::linspace(0.0, 1.0, n, torch::kFloat32);
    torch::Tensor t = torch::linspace(4.0 * double(c), 4.0 * double(c + 1), n, torch::kFloat32) +
                      torch::randn({n}, gen) * kNoise;
    xs.push_back(torch::stack({r * torch::sin(t), r * torch::cos(t)}, 1));
    ys.push_back(torch::full({n}, c, torch::kInt64));
  }
  torch::Tensor x = torch::cat(xs), y = torch::cat(ys);
  torch::Tensor order = torch::randperm(x.size(0), gen);
  x = x.index_select(0, order);
  y = y.index_select(0, order);
  const int64_t n_val = x.size(0) / 5;
  Spiral s;
  s.x_val = x.slice(0, 0, n_val).contiguous();
  s.y_val = y.slice(0, 0, n_val).contiguous();
  s.x_train = x.slice(0, n_val).contiguous();
  s.y_train = y.slice(0, n_val).contiguous();
  return s;
}

}  // namespace ckptledger
