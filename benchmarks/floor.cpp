// The benchmark's compute floor: only the Linear layers' matrix products of one training epoch, in a C++
// loop (the floor has no Python loop overhead). Same products, shapes and order as the Python-loop
// floor in contenders.py (FloorPython): per batch x@W^T forward through every layer, then backward
// g^T@a (grad_W) for every layer and g@W (grad_in) for all but the first; results discarded.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

namespace {

void floor_epoch(const at::Tensor& x, int64_t batch_size, at::TensorList weights) {
  at::NoGradGuard no_grad;
  const int64_t last = static_cast<int64_t>(weights.size()) - 1;
  std::vector<at::Tensor> weights_t;
  for (const auto& w : weights) weights_t.push_back(w.t());
  std::vector<at::Tensor> acts(last + 2);
  for (int64_t start = 0; start < x.size(0); start += batch_size) {
    acts[0] = x.narrow(0, start, std::min(batch_size, x.size(0) - start));
    for (int64_t i = 0; i <= last; ++i) acts[i + 1] = at::mm(acts[i], weights_t[i]);
    at::Tensor g = acts[last + 1];  // stands in for d(loss)/d(logits): same shape, no loss computed
    for (int64_t i = last; i >= 0; --i) {
      at::mm(g.t(), acts[i]);  // grad_W (discarded: no optimizer)
      if (i) g = at::mm(g, weights[i]);  // grad_in
    }
  }
}

}  // namespace

TORCH_LIBRARY(mnist_softmax_bench, m) {
  m.def("floor_epoch(Tensor x, int batch_size, Tensor[] weights) -> ()");
  m.impl("floor_epoch", &floor_epoch);
}
