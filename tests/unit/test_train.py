"""Training loop: a step learns, seeds make runs bit-identical, divergence is caught, optimizers get their settings."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from src.model import MLP
from src.train import BACKWARDS, EpochResult, NonFiniteLoss, make_optimizer, predict, train
from tests.synthetic import normalized

MODES = list(BACKWARDS)  # every train.backward choice


def mode_kwargs(mode):
    return {"backward": mode}


@pytest.fixture
def data(tiny_split):
    tr_x, tr_y, te_x, te_y = tiny_split
    return normalized(tr_x, 0.13, 0.3), tr_y, normalized(te_x, 0.13, 0.3), te_y


def run_training(data, *, init_seed: int, shuffle_seed: int, mode, lr: float = 0.05, epochs: int = 2,
                 optimizer: str = "sgd"):
    tr_x, tr_y, te_x, te_y = data
    torch.manual_seed(init_seed)
    model = MLP(784, [32, 16], 10, "relu")
    opt = make_optimizer(model, optimizer, lr, 0.9, (0.9, 0.999), 0.0)
    history = train(model, tr_x, tr_y, te_x, te_y, epochs=epochs, batch_size=32, eval_batch_size=50,
                    optimizer=opt, generator=torch.Generator().manual_seed(shuffle_seed), **mode_kwargs(mode))
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


@pytest.mark.parametrize("mode", MODES)
def test_training_learns_the_tiny_dataset(data, mode):
    model, history = run_training(data, init_seed=0, shuffle_seed=0, mode=mode, epochs=3)
    assert [h.epoch for h in history] == [1, 2, 3]
    assert all(isinstance(h, EpochResult) for h in history)
    assert history[-1].train_loss < history[0].train_loss
    # history's test numbers are what predict() says about the final model
    loss, acc, predicted, logits = predict(model, data[2], data[3], batch_size=50)
    assert history[-1].test_loss == pytest.approx(loss, rel=1e-6)
    assert history[-1].test_accuracy == pytest.approx(acc)
    assert acc == pytest.approx(float((logits.argmax(1) == data[3]).float().mean()))
    assert acc > 0.5  # ten well-separated squares: chance is 0.1


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_gives_bit_identical_weights(data, mode):
    a, ha = run_training(data, init_seed=7, shuffle_seed=7, mode=mode)
    b, hb = run_training(data, init_seed=7, shuffle_seed=7, mode=mode)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [(h.train_loss, h.test_loss, h.test_accuracy) for h in ha] == \
           [(h.train_loss, h.test_loss, h.test_accuracy) for h in hb]


def _differs(m1, m2) -> bool:
    return any(not torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


@pytest.mark.parametrize("mode", MODES)
def test_different_seed_gives_different_weights(data, mode):
    a, _ = run_training(data, init_seed=7, shuffle_seed=7, mode=mode)
    b, _ = run_training(data, init_seed=8, shuffle_seed=8, mode=mode)
    assert _differs(a, b)


def test_shuffle_seed_alone_changes_the_result(data):
    """The generator really drives the batch order: same init, other shuffle seed -> other weights."""
    a, _ = run_training(data, init_seed=7, shuffle_seed=7, mode="autograd")
    b, _ = run_training(data, init_seed=7, shuffle_seed=8, mode="autograd")
    assert _differs(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_huge_learning_rate_raises_non_finite_loss(data, mode):
    seen = []
    with pytest.raises(NonFiniteLoss, match=r"epoch 1: training loss is (nan|inf)") as err:
        tr_x, tr_y, te_x, te_y = data
        torch.manual_seed(0)
        model = MLP(784, [32, 16], 10, "relu")
        opt = make_optimizer(model, "sgd", 1.0e6, 0.9, (0.9, 0.999), 0.0)
        train(model, tr_x, tr_y, te_x, te_y, epochs=3, batch_size=32, eval_batch_size=50, optimizer=opt,
              generator=torch.Generator().manual_seed(0), on_epoch=seen.append, **mode_kwargs(mode))
    assert "train.lr" in str(err.value)
    assert seen == []  # the diverged epoch is never reported
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # it really diverged


def test_make_optimizer_sgd_settings():
    model = MLP(784, [8], 10, "relu")
    opt = make_optimizer(model, "sgd", 0.03, 0.7, (0.8, 0.9), 1e-4)
    assert type(opt) is torch.optim.SGD
    (group,) = opt.param_groups
    assert group["lr"] == 0.03 and group["momentum"] == 0.7 and group["weight_decay"] == 1e-4
    assert not group["nesterov"] and group["dampening"] == 0
    assert len(group["params"]) == len(list(model.parameters()))


def test_make_optimizer_adam_settings():
    model = MLP(784, [8], 10, "relu")
    opt = make_optimizer(model, "adam", 2e-3, 0.7, (0.8, 0.95), 1e-5)
    assert type(opt) is torch.optim.Adam
    (group,) = opt.param_groups
    assert group["lr"] == 2e-3 and tuple(group["betas"]) == (0.8, 0.95) and group["weight_decay"] == 1e-5
    assert len(group["params"]) == len(list(model.parameters()))


def test_make_optimizer_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(MLP(784, [8], 10, "relu"), "rmsprop", 0.1, 0.0, (0.9, 0.999), 0.0)


def test_predict_batches_do_not_change_the_result(data):
    torch.manual_seed(0)
    model = MLP(784, [32, 16], 10, "relu")
    l1, a1, p1, _ = predict(model, data[2], data[3], batch_size=7)
    l2, a2, p2, _ = predict(model, data[2], data[3], batch_size=1000)
    assert torch.equal(p1, p2) and a1 == a2
    assert l1 == pytest.approx(l2, rel=1e-6)
    with torch.no_grad():
        direct = float(nn.functional.cross_entropy(model(data[2]), data[3]))
    assert l2 == pytest.approx(direct, rel=1e-6)


def fresh_interpreter(code: str) -> list[str]:
    """Run code in a new Python (this one may have imported torch._inductor / _dynamo); its printed words."""
    import subprocess
    import sys
    from pathlib import Path
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, check=True).stdout.split()


def test_use_deterministic_algorithms_sets_torch_flag_without_importing_inductor():
    """The stage's determinism switch is torch's own flag, and it skips torch.use_deterministic_algorithms'
    ~2 s import of torch._inductor."""
    assert fresh_interpreter("import sys, torch\n"
                             "from src.train import use_deterministic_algorithms\n"
                             "use_deterministic_algorithms(True)\n"
                             "assert torch.are_deterministic_algorithms_enabled()\n"
                             "use_deterministic_algorithms(False)\n"
                             "assert not torch.are_deterministic_algorithms_enabled()\n"
                             "print('torch._inductor' in sys.modules)\n") == ["False"]


OPTIMIZER_ROUND_TRIP = (
    "model = MLP(6, [5], 3, 'relu')\n"
    "opt = {build}\n"
    "opt.zero_grad()\n"
    "opt.load_state_dict(opt.state_dict())\n"  # what a checkpoint save and resume call
    "print('torch._dynamo' in sys.modules)\n"
)


def test_make_optimizer_skips_the_dynamo_import_and_the_optimizer_still_steps():
    """Building the optimizer, zero_grad and a state_dict round trip no longer import torch._dynamo (~2 s per
    training process), and the optimizer still takes torch's own step (which does import it) as usual."""
    assert fresh_interpreter(
        "import sys, torch\n"
        "from src.model import MLP\n"
        "from src.train import make_optimizer\n"
        + OPTIMIZER_ROUND_TRIP.format(build="make_optimizer(model, 'sgd', 0.5, 0.0, (0.9, 0.999), 0.0)") +
        "before = [p.detach().clone() for p in model.parameters()]\n"
        "torch.nn.functional.cross_entropy(model(torch.ones(2, 6)), torch.tensor([0, 2])).backward()\n"
        "opt.step()\n"
        "print(all(torch.equal(p, b - 0.5 * p.grad) for p, b in zip(model.parameters(), before)))\n"
    ) == ["False", "True"]


def test_plain_torch_optimizer_does_import_dynamo():
    """The control of the test above: without make_optimizer the same calls do import torch._dynamo (if a
    torch release drops the import, this fails and the workaround in src/train.py can go)."""
    assert fresh_interpreter(
        "import sys, torch\n"
        "from src.model import MLP\n"
        + OPTIMIZER_ROUND_TRIP.format(build="torch.optim.SGD(model.parameters(), lr=0.5, foreach=True)")
    ) == ["True"]
