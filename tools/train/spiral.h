// The data of the reference training jobs (`ckptledger demo`, `ckptledger-train train`): CS231n's
// 3-arm 2-D spiral, generated from the seed alone, shuffled once and split 80/20 into train and
// validation.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ckptledger {

struct Spiral {
  static constexpr int64_t kClasses = 3;
  at::Tensor x_train, y_train, x_val, y_val;  // float32 [n, 2], int64 [n]
};
Spiral make_spiral(int64_t seed, int64_t points_per_class);

}  // namespace ckptledger
