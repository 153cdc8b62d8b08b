"""The hand-written backward (train.backward: manual, and its C++ build manual-cpp) against autograd +
torch.optim.SGD in float64, and the C++ build against the Python step bit for bit.

In float64 the hand-written step and autograd must agree to rounding: weights, SGD momentum buffers and
per-epoch losses. A wrong gradient, a wrong momentum form or a buffer not handed back to the optimizer shows
up as a difference of order lr·gradient (about 1e-3 here), a billion times the tolerance. The C++ build runs
the Python step's ops in the same order, so there the results must be equal, not close.
"""
from __future__ import annotations

import pytest
import torch

from src.model import MLP
from src.train import ManualReluSGDStep, make_optimizer, train_epoch

N, IN, BATCH = 100, 20, 32  # 100 = 3·32 + 4: the last batch is partial


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (N,), generator=g)
    return x, y


def _setup(momentum, weight_decay, activation="relu", optimizer="sgd"):
    torch.manual_seed(0)
    model = MLP(IN, [16, 12], 10, activation).double()
    opt = make_optimizer(model, optimizer, 0.05, momentum, (0.9, 0.999), weight_decay)
    return model, opt


def _epochs(model, opt, modes, x, y, batch_size=BATCH):
    shuffle = torch.Generator().manual_seed(0)
    return [train_epoch(model, x, y, batch_size=batch_size, optimizer=opt, generator=shuffle, backward=backward)
            for backward in modes]


@pytest.mark.parametrize("backward", ["manual", "manual-cpp"])
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 1.0e-2])
def test_manual_epochs_match_autograd_sgd(momentum, weight_decay, backward):
    x, y = _data()
    ref_model, ref_opt = _setup(momentum, weight_decay)
    ref_losses = _epochs(ref_model, ref_opt, ["autograd"] * 3, x, y)
    model, opt = _setup(momentum, weight_decay)
    assert ManualReluSGDStep.applies(model, opt)
    losses = _epochs(model, opt, [backward] * 3, x, y)

    assert losses == pytest.approx(ref_losses, rel=1e-12)
    assert ref_losses[-1] < ref_losses[0]  # it trained: the comparison is not between two no-ops
    for (name, p), ref in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, ref, rtol=0, atol=1e-12, msg=name)
        assert not torch.equal(p, _setup(momentum, weight_decay)[0].state_dict()[name])
        if momentum:
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[ref]["momentum_buffer"],
                                       rtol=0, atol=1e-10, msg=name)


def test_switching_modes_between_epochs_keeps_sgd_state():
    """manual, autograd, manual-cpp, manual = autograd throughout: the momentum buffers are handed over."""
    x, y = _data()
    ref_model, ref_opt = _setup(0.9, 0.0)
    ref_losses = _epochs(ref_model, ref_opt, ["autograd"] * 4, x, y)
    model, opt = _setup(0.9, 0.0)
    losses = _epochs(model, opt, ["manual", "autograd", "manual-cpp", "manual"], x, y)
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    for p, ref in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, ref, rtol=0, atol=1e-12)


def test_momentum_of_one_is_left_to_autograd():
    """params.yaml refuses momentum 1; an optimizer built by hand with it must not reach the u form's 1/(1-m)."""
    model, opt = _setup(0.5, 0.0)
    opt.param_groups[0]["momentum"] = 1.0
    assert not ManualReluSGDStep.applies(model, opt)


@pytest.mark.parametrize("activation, optimizer, nesterov", [("tanh", "sgd", False), ("relu", "adam", False),
                                                              ("relu", "sgd", True)])
def test_other_setups_fall_back_to_autograd(activation, optimizer, nesterov):
    x, y = _data()
    model, opt = _setup(0.9, 0.0, activation, optimizer)
    if nesterov:
        opt.param_groups[0]["nesterov"] = True
    assert not ManualReluSGDStep.applies(model, opt)
    ref_model, ref_opt = _setup(0.9, 0.0, activation, optimizer)
    if nesterov:
        ref_opt.param_groups[0]["nesterov"] = True
    assert _epochs(model, opt, ["manual-cpp", "manual"], x, y) == _epochs(ref_model, ref_opt, ["autograd"] * 2, x, y)
    for p, ref in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, ref)


@pytest.mark.parametrize("momentum, weight_decay, batch_size", [
    (0.5, 0.0, BATCH), (0.0, 0.0, BATCH), (0.0, 1.0e-2, BATCH), (0.9, 1.0e-2, BATCH),
    (0.5, 0.0, 4 * N)])  # one batch, shorter than batch_size
def test_cpp_build_is_bit_identical_to_the_python_step(momentum, weight_decay, batch_size, monkeypatch):
    """float32, as the stage trains: same losses, weights and momentum buffers, bit for bit, epoch after epoch
    (each epoch ends with a partial batch)."""
    cpp_epochs = []
    run_epoch_cpp = ManualReluSGDStep.run_epoch_cpp
    monkeypatch.setattr(ManualReluSGDStep, "run_epoch_cpp",
                        lambda *args: cpp_epochs.append(1) or run_epoch_cpp(*args))  # counts, runs the real one
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(N, IN, generator=g), torch.randint(0, 10, (N,), generator=g)
    models = []
    for backward in ("manual", "manual-cpp"):
        torch.manual_seed(0)
        model = MLP(IN, [16, 12], 10, "relu")
        opt = make_optimizer(model, "sgd", 0.05, momentum, (0.9, 0.999), weight_decay)
        models.append((model, opt, _epochs(model, opt, [backward] * 3, x, y, batch_size)))
    (py_model, py_opt, py_losses), (cpp_model, cpp_opt, cpp_losses) = models
    assert len(cpp_epochs) == 3  # the C++ build ran every manual-cpp epoch: not two Python runs compared
    assert cpp_losses == py_losses and py_losses[-1] < py_losses[0]
    for p, ref in zip(cpp_model.parameters(), py_model.parameters()):
        assert torch.equal(p, ref)
        if momentum:
            assert torch.equal(cpp_opt.state[p]["momentum_buffer"], py_opt.state[ref]["momentum_buffer"])


def test_unknown_backward_is_refused():
    model, opt = _setup(0.5, 0.0)
    x, y = _data()
    with pytest.raises(ValueError, match="unknown backward 'cpp' \\(manual-cpp \\| manual \\| autograd\\)"):
        _epochs(model, opt, ["cpp"], x, y)
