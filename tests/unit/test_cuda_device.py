"""The `train.device` path: cpu always; cuda where a GPU exists (skipped here, run on a lent GPU machine)."""
import pytest
import torch

from src.model import MLP
from src.train import make_optimizer, predict, resolve_device, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _data(device, n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def _train(device, backward):
    torch.manual_seed(0)
    model = MLP(784, [64, 32], 10, "relu").to(device)
    opt = make_optimizer(model, "sgd", 0.05, 0.5, (0.9, 0.999), 0.0)
    x, y = _data(device)
    history = train(model, x, y, x, y, epochs=2, batch_size=32, eval_batch_size=128, optimizer=opt,
                    generator=torch.Generator().manual_seed(0), backward=backward)
    return model, history


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


@cuda
@pytest.mark.parametrize("backward", ["manual-cpp", "manual", "autograd"])
def test_cuda_training_matches_cpu(backward):
    cpu_model, cpu_hist = _train(torch.device("cpu"), backward)
    gpu_model, gpu_hist = _train(resolve_device("cuda"), backward)
    assert next(gpu_model.parameters()).device.type == "cuda"
    for a, b in zip(cpu_model.state_dict().values(), gpu_model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-3, atol=1e-4)
    assert abs(cpu_hist[-1].train_loss - gpu_hist[-1].train_loss) < 1e-3


@cuda
def test_cuda_cpp_step_is_bit_identical_to_the_python_step():
    cpp_model, cpp_hist = _train(resolve_device("cuda"), "manual-cpp")
    py_model, py_hist = _train(resolve_device("cuda"), "manual")
    assert [h.train_loss for h in cpp_hist] == [h.train_loss for h in py_hist]
    for a, b in zip(cpp_model.state_dict().values(), py_model.state_dict().values()):
        assert torch.equal(a, b)


@cuda
@pytest.mark.parametrize("backward", ["manual-cpp", "manual"])
def test_cuda_training_is_deterministic(backward):
    first, _ = _train(resolve_device("cuda"), backward)
    second, _ = _train(resolve_device("cuda"), backward)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    x, y = _data("cuda")
    loss, acc, predicted, _ = predict(first, x, y, batch_size=100)
    assert predicted.device.type == "cuda" and 0.0 <= acc <= 1.0
