"""The `train.device` path: cpu always; cuda where a GPU exists (skipped here, run on a lent GPU machine)."""

import pytest
import torch

from mnist_softmax.core.evaluate import predict
from mnist_softmax.core.model import MLP
from mnist_softmax.core.train import (
    make_optimizer,
    resolve_device,
    train,
    use_deterministic_algorithms,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _data(device, n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def _train(device, optimizer="sgd"):
    use_deterministic_algorithms(device)
    torch.manual_seed(0)
    model = MLP(784, [64, 32], 10, "relu").to(device)
    opt = make_optimizer(model, optimizer, 0.05 if optimizer == "sgd" else 1e-3, 0.5, (0.9, 0.999), 0.0)
    x, y = _data(device)
    history = train(
        model,
        x,
        y,
        x,
        y,
        epochs=2,
        batch_size=32,
        eval_batch_size=128,
        optimizer=opt,
        generator=torch.Generator().manual_seed(0),
    )
    return model, history


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


@cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cuda_training_matches_cpu(optimizer):
    cpu_model, cpu_hist = _train(torch.device("cpu"), optimizer)
    gpu_model, gpu_hist = _train(resolve_device("cuda"), optimizer)
    assert next(gpu_model.parameters()).device.type == "cuda"
    for a, b in zip(cpu_model.state_dict().values(), gpu_model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-3, atol=1e-4)
    assert abs(cpu_hist[-1].train_loss - gpu_hist[-1].train_loss) < 1e-3


@cuda
def test_cuda_training_is_deterministic():
    first, first_hist = _train(resolve_device("cuda"))
    second, second_hist = _train(resolve_device("cuda"))
    assert [h.train_loss for h in first_hist] == [h.train_loss for h in second_hist]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    x, y = _data("cuda")
    result = predict(first, x, y, batch_size=100)
    assert result.predicted.device.type == "cuda" and 0.0 <= result.accuracy <= 1.0
