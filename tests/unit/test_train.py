"""Training loop: a step learns, seeds make runs bit-identical, divergence is caught, optimizers get their settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_softmax.core.evaluate import predict
from mnist_softmax.core.history import EpochResult
from mnist_softmax.core.model import MLP
from mnist_softmax.core.train import NonFiniteLoss, make_optimizer, train, train_epoch
from tests.synthetic import normalized


@pytest.fixture
def data(tiny_split):
    tr_x, tr_y, te_x, te_y = tiny_split
    return normalized(tr_x, 0.13, 0.3), tr_y, normalized(te_x, 0.13, 0.3), te_y


def run_training(
    data,
    *,
    init_seed: int,
    shuffle_seed: int,
    lr: float = 0.05,
    epochs: int = 2,
    optimizer: str = "sgd",
):
    tr_x, tr_y, te_x, te_y = data
    torch.manual_seed(init_seed)
    model = MLP(784, [32, 16], 10, "relu")
    opt = make_optimizer(model, optimizer, lr, 0.9, (0.9, 0.999), 0.0)
    history = train(
        model,
        tr_x,
        tr_y,
        te_x,
        te_y,
        epochs=epochs,
        batch_size=32,
        eval_batch_size=50,
        optimizer=opt,
        generator=torch.Generator().manual_seed(shuffle_seed),
    )
    return model, history


def batch_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adam", 1e-3)])
def test_one_step_lowers_the_loss_on_its_batch(data, optimizer, lr):
    x, y = data[0][:16], data[1][:16]
    torch.manual_seed(0)
    model = MLP(784, [32, 16], 10, "relu")
    opt = make_optimizer(model, optimizer, lr, 0.0, (0.9, 0.999), 0.0)
    before = batch_loss(model, x, y)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert float(loss.detach()) == pytest.approx(before, rel=1e-6)
    assert batch_loss(model, x, y) < before


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adam", 1e-3)])
def test_training_learns_the_tiny_dataset(data, optimizer, lr):
    model, history = run_training(data, init_seed=0, shuffle_seed=0, epochs=3, optimizer=optimizer, lr=lr)
    assert [h.epoch for h in history] == [1, 2, 3]
    assert all(isinstance(h, EpochResult) for h in history)
    assert history[-1].train_loss < history[0].train_loss
    # history's test numbers are what predict() says about the final model
    result = predict(model, data[2], data[3], batch_size=50)
    assert history[-1].test_loss == pytest.approx(result.loss, rel=1e-6)
    assert history[-1].test_accuracy == pytest.approx(result.accuracy)
    assert result.accuracy == pytest.approx(float((result.logits.argmax(1) == data[3]).float().mean()))
    assert result.accuracy > 0.5  # ten well-separated squares: chance is 0.1


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_gives_bit_identical_weights(data, optimizer):
    a, ha = run_training(data, init_seed=7, shuffle_seed=7, optimizer=optimizer)
    b, hb = run_training(data, init_seed=7, shuffle_seed=7, optimizer=optimizer)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [(h.train_loss, h.test_loss, h.test_accuracy) for h in ha] == [
        (h.train_loss, h.test_loss, h.test_accuracy) for h in hb
    ]


def _differs(m1, m2) -> bool:
    return any(not torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


def test_different_seed_gives_different_weights(data):
    a, _ = run_training(data, init_seed=7, shuffle_seed=7)
    b, _ = run_training(data, init_seed=8, shuffle_seed=8)
    assert _differs(a, b)


def test_shuffle_seed_alone_changes_the_result(data):
    """The generator really drives the batch order: same init, other shuffle seed -> other weights."""
    a, _ = run_training(data, init_seed=7, shuffle_seed=7)
    b, _ = run_training(data, init_seed=7, shuffle_seed=8)
    assert _differs(a, b)


def test_huge_learning_rate_raises_non_finite_loss(data):
    seen: list[EpochResult] = []
    with pytest.raises(NonFiniteLoss, match=r"epoch 1: training loss is (nan|inf)") as err:
        tr_x, tr_y, te_x, te_y = data
        torch.manual_seed(0)
        model = MLP(784, [32, 16], 10, "relu")
        opt = make_optimizer(model, "sgd", 1.0e6, 0.9, (0.9, 0.999), 0.0)
        train(
            model,
            tr_x,
            tr_y,
            te_x,
            te_y,
            epochs=3,
            batch_size=32,
            eval_batch_size=50,
            optimizer=opt,
            generator=torch.Generator().manual_seed(0),
            on_epoch=seen.append,
        )
    assert "train.lr" in str(err.value)
    assert seen == []  # the diverged epoch is never reported
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # it really diverged


def test_make_optimizer_sgd_settings():
    model = MLP(784, [8], 10, "relu")
    opt = make_optimizer(model, "sgd", 0.03, 0.7, (0.8, 0.9), 1e-4)
    assert type(opt) is torch.optim.SGD
    (group,) = opt.param_groups
    assert group["lr"] == 0.03 and group["momentum"] == 0.7 and group["weight_decay"] == 1e-4
    assert not group["nesterov"] and group["dampening"] == 0 and group["fused"]
    assert len(group["params"]) == len(list(model.parameters()))


def test_make_optimizer_adam_settings():
    model = MLP(784, [8], 10, "relu")
    opt = make_optimizer(model, "adam", 2e-3, 0.7, (0.8, 0.95), 1e-5)
    assert type(opt) is torch.optim.Adam
    (group,) = opt.param_groups
    assert group["lr"] == 2e-3 and tuple(group["betas"]) == (0.8, 0.95) and group["weight_decay"] == 1e-5
    assert group["fused"]
    assert len(group["params"]) == len(list(model.parameters()))


def test_make_optimizer_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(MLP(784, [8], 10, "relu"), "rmsprop", 0.1, 0.0, (0.9, 0.999), 0.0)


def test_predict_batches_do_not_change_the_result(data):
    torch.manual_seed(0)
    model = MLP(784, [32, 16], 10, "relu")
    small = predict(model, data[2], data[3], batch_size=7)
    whole = predict(model, data[2], data[3], batch_size=1000)
    assert torch.equal(small.predicted, whole.predicted) and small.accuracy == whole.accuracy
    assert small.loss == pytest.approx(whole.loss, rel=1e-6)
    with torch.no_grad():
        direct = float(nn.functional.cross_entropy(model(data[2]), data[3]))
    assert whole.loss == pytest.approx(direct, rel=1e-6)
    assert model.training  # predict evaluates in eval mode and leaves the model as it found it


def test_epoch_loss_is_the_mean_per_sample_loss_and_the_step_is_torch_sgd(data):
    """train_epoch against a plain loop written here: the same batches (the generator's permutation), the
    same textbook step with torch.optim.SGD, and the mean per-sample loss over an uneven last batch."""
    tr_x, tr_y = data[0][:100], data[1][:100]  # 100 = 3 batches of 32 + one of 4

    def fresh():
        torch.manual_seed(3)
        return MLP(784, [32, 16], 10, "relu")

    ours = fresh()
    loss = train_epoch(
        ours,
        tr_x,
        tr_y,
        batch_size=32,
        generator=torch.Generator().manual_seed(5),
        optimizer=make_optimizer(ours, "sgd", 0.05, 0.5, (0.9, 0.999), 1e-4),
    )
    ref = fresh()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-4)
    total = 0.0
    for idx in torch.randperm(100, generator=torch.Generator().manual_seed(5)).split(32):
        batch_loss = nn.functional.cross_entropy(ref(tr_x[idx]), tr_y[idx])
        opt.zero_grad()
        batch_loss.backward()
        opt.step()
        total += float(batch_loss.detach()) * len(idx)
    assert loss == pytest.approx(total / 100, rel=1e-5)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # fused vs for-each kernels: rounding only
