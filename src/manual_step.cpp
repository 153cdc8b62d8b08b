// One training epoch of src/train.py's ManualReluSGDStep, as one C++ call: the same ATen ops with the same
// arguments in the same order (so the same bits), without the Python interpreter between them. At batch 64
// on 2 CPU cores the ~40 small op calls a step cost Python about as much as the momentum update does.
// Built on first use by src/native.py; the Python class stays the readable reference and the test oracle.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

using at::Tensor;
using at::TensorList;

// Per-step loss of every batch of `order` (a permutation of the rows of `images`), stacked. Updates the
// weights, biases and their momentum anchors (u in ManualReluSGDStep's docstring) in place; with momentum 0
// the anchors are the parameters themselves.
Tensor manual_sgd_epoch(const Tensor& images, const Tensor& labels, const Tensor& order, int64_t batch_size,
                        TensorList weights, TensorList biases, TensorList weight_anchors,
                        TensorList bias_anchors, double gain, double momentum, double weight_decay) {
  at::NoGradGuard no_grad;
  const int64_t last = static_cast<int64_t>(weights.size()) - 1;
  TORCH_CHECK(last >= 0 && biases.size() == weights.size() && weight_anchors.size() == weights.size() &&
                  bias_anchors.size() == weights.size(),
              "manual_sgd_epoch: one weight, bias and two anchors per layer");
  std::vector<Tensor> weights_t;
  for (const auto& w : weights) weights_t.push_back(w.t());  // views: they follow the in-place updates
  const Tensor one = at::ones({}, images.options());  // d(loss)/d(loss), for nll_loss_backward
  // bias gradient = G^T @ ones (addmv_); as long as the longest batch
  const Tensor ones = at::ones({std::min(batch_size, images.size(0))}, images.options());
  const auto batch_indices = order.split(batch_size);
  const auto batch_labels = labels.index_select(0, order).split(batch_size);  // one gather an epoch
  std::vector<Tensor> losses;
  losses.reserve(batch_indices.size());
  std::vector<Tensor> inputs(last + 1);  // each layer's input: x, then the ReLU outputs
  for (size_t step = 0; step < batch_indices.size(); ++step) {
    const Tensor& y = batch_labels[step];
    inputs[0] = images.index_select(0, batch_indices[step]);
    for (int64_t i = 0; i < last; ++i) inputs[i + 1] = at::_addmm_activation(biases[i], inputs[i], weights_t[i]);
    const Tensor logits = at::addmm(biases[last], inputs[last], weights_t[last]);
    const Tensor log_probs = at::log_softmax(logits, 1);
    const auto [loss, total_weight] = at::nll_loss_forward(log_probs, y, {}, at::Reduction::Mean, -100);
    Tensor grad = at::_log_softmax_backward_data(
        at::nll_loss_backward(one, log_probs, y, {}, at::Reduction::Mean, -100, total_weight), log_probs, 1,
        log_probs.scalar_type());
    const Tensor batch_ones = ones.narrow(0, 0, y.size(0));
    for (int64_t i = last; i >= 0; --i) {
      const Tensor grad_t = grad.t();
      Tensor grad_below;
      if (i) grad_below = at::threshold_backward(at::mm(grad, weights[i]), inputs[i], 0);
      if (weight_decay != 0) {
        weight_anchors[i].add_(weights[i], gain * weight_decay);
        bias_anchors[i].add_(biases[i], gain * weight_decay);
      }
      weight_anchors[i].addmm_(grad_t, inputs[i], 1, gain);
      bias_anchors[i].addmv_(grad_t, batch_ones, 1, gain);
      if (momentum != 0) weights[i].lerp_(weight_anchors[i], 1.0 - momentum);
      if (i) grad = grad_below;
    }
    if (momentum != 0) at::_foreach_lerp_(biases, bias_anchors, 1.0 - momentum);
    losses.push_back(loss);
  }
  return at::stack(losses);
}

}  // namespace

// The schema marks the four lists as written in place. With momentum 0 the anchors are the parameters
// themselves (the same tensors), which the separate alias sets do not say: call it in eager mode only, not
// under torch.compile or functionalization (src/train.py does).
TORCH_LIBRARY(mnist_softmax, m) {
  m.def(
      "manual_sgd_epoch(Tensor images, Tensor labels, Tensor order, int batch_size, Tensor(a!)[] weights, "
      "Tensor(b!)[] biases, Tensor(c!)[] weight_anchors, Tensor(d!)[] bias_anchors, float gain, "
      "float momentum, float weight_decay) -> Tensor");
  m.impl("manual_sgd_epoch", &manual_sgd_epoch);
}
