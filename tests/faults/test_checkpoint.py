"""mnist_softmax.core.checkpoint in-process (the real kill -9 + `dvc repro` is in test_training.py):
a resumed training is bit-identical to an uninterrupted one; a checkpoint from other params, data or code,
a corrupt one and one whose unpickling would run code are all ignored with a message."""

from __future__ import annotations

import hashlib
import io
import pickle

import pytest
import torch

from mnist_softmax.core import checkpoint
from mnist_softmax.core.checkpoint import Checkpoint
from mnist_softmax.core.model import MLP
from mnist_softmax.core.params import parse_params
from mnist_softmax.core.train import make_optimizer, train
from tests import synthetic

EPOCHS, CRASH_AFTER = 5, 2


class Crash(Exception):
    pass


@pytest.fixture
def tiny():
    synthetic.register_tiny(synthetic.raw_files())
    yield
    synthetic.unregister()


@pytest.fixture
def data():
    tr_x, tr_y = synthetic.make_split(300, 0)
    te_x, te_y = synthetic.make_split(100, 1)
    return (
        synthetic.normalized(tr_x, 0.13, 0.3),
        tr_y.long(),
        synthetic.normalized(te_x, 0.13, 0.3),
        te_y.long(),
    )


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "train.safetensors").write_bytes(b"tensors")
    (folder / "dataset.json").write_text("{}")
    return folder


def params(**overrides):
    return parse_params(synthetic.tiny_params(["dir:/nowhere"], **{"train.checkpoint": True, **overrides}))


def run(data, p, ckpt: Checkpoint, *, crash_after=None):
    """What pipeline/train.py does, in-process: fresh objects (as a new process has), resume, train."""
    tr_x, tr_y, te_x, te_y = data
    torch.manual_seed(p.seed)
    model = MLP(784, list(p.model.hidden_sizes), 10, p.model.activation)
    opt = make_optimizer(model, p.train.optimizer, p.train.lr, p.train.momentum, p.train.betas, p.train.weight_decay)
    gen = torch.Generator().manual_seed(p.seed)
    done, tags = ckpt.resume(model, opt, gen)

    def on_epoch(r):
        done.append(r)
        ckpt.save(model, opt, gen, done, "run-1")
        if r.epoch == crash_after:
            raise Crash

    train(
        model,
        tr_x,
        tr_y,
        te_x,
        te_y,
        epochs=p.train.epochs,
        batch_size=p.train.batch_size,
        eval_batch_size=p.train.eval_batch_size,
        optimizer=opt,
        generator=gen,
        start_epoch=len(done) + 1,
        on_epoch=on_epoch,
    )
    return model, [(h.epoch, h.train_loss, h.test_loss, h.test_accuracy) for h in done], tags


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_is_bit_identical(tiny, data, data_dir, tmp_path, optimizer):
    p = params(**{"train.epochs": EPOCHS, "train.optimizer": optimizer, "train.lr": 0.01})
    ref_model, ref_history, _ = run(data, p, Checkpoint(tmp_path / "ref.pt", p, data_dir, "cpu"))

    path = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        run(data, p, Checkpoint(path, p, data_dir, "cpu"), crash_after=CRASH_AFTER)
    messages: list[str] = []
    model, history, tags = run(data, p, Checkpoint(path, p, data_dir, "cpu", log=messages.append))

    assert tags == {"resumed_from_run": "run-1", "resumed_from_epoch": str(CRASH_AFTER)}
    assert any(f"epochs 1..{CRASH_AFTER} done" in m for m in messages), messages
    assert history == ref_history  # floats compared exactly
    for (name, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("change", ["params", "data", "code"])
def test_checkpoint_of_other_params_data_or_code_is_ignored(tiny, data, data_dir, tmp_path, change):
    p = params(**{"train.epochs": EPOCHS})
    path = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        run(data, p, Checkpoint(path, p, data_dir, "cpu"), crash_after=CRASH_AFTER)
    code = []
    if change == "params":
        p = params(**{"train.epochs": EPOCHS, "train.lr": 0.02})
    elif change == "data":
        (data_dir / "train.safetensors").write_bytes(b"other tensors")
    else:
        extra = tmp_path / "pipeline_train.py"
        extra.write_text("# another version of the stage\n")
        code = [extra]
    messages: list[str] = []
    ckpt = Checkpoint(path, p, data_dir, "cpu", code_files=code, log=messages.append)
    model = MLP(784, [32, 16], 10, "relu")
    done, tags = ckpt.resume(model, make_optimizer(model, "sgd", 0.1, 0.0, (0.9, 0.999), 0.0), torch.Generator())
    assert (done, tags) == ([], {})
    assert len(messages) == 1 and "made with other params, data or code" in messages[0]
    assert "starting at epoch 1" in messages[0]


def test_corrupt_or_unsafe_checkpoint_is_ignored(tiny, data, data_dir, tmp_path):
    p = params(**{"train.epochs": EPOCHS})
    path = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        run(data, p, Checkpoint(path, p, data_dir, "cpu"), crash_after=CRASH_AFTER)
    good = path.read_bytes()

    class Payload:
        def __reduce__(self):
            return (print, ("unpickling ran code",))

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10  # one bit inside the weights
    unsafe = pickle.dumps({"format": 2, "x": Payload()}, protocol=2)
    with_digest = checkpoint.MAGIC + hashlib.sha256(unsafe).hexdigest().encode() + b"\n" + unsafe
    for bad in (good[: len(good) // 2], b"", bytes(flipped), unsafe, with_digest):
        path.write_bytes(bad)
        messages: list[str] = []
        model = fresh_model()
        done, _ = Checkpoint(path, p, data_dir, "cpu", log=messages.append).resume(
            model, make_optimizer(model, "sgd", 0.1, 0.0, (0.9, 0.999), 0.0), torch.Generator()
        )
        assert done == []
        assert len(messages) == 1 and "cannot read it" in messages[0], messages
        assert_fresh(model)


def fresh_model():
    torch.manual_seed(11)
    return MLP(784, [32, 16], 10, "relu")


def assert_fresh(model):
    for a, b in zip(model.state_dict().values(), fresh_model().state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["weights of another shape", "momentum of another shape", "history gap"])
def test_a_well_formed_checkpoint_that_does_not_fit_is_ignored_and_nothing_is_half_restored(
    tiny, data, data_dir, tmp_path, damage
):
    """Right format, right fingerprint, right digest, wrong contents: refused with a message, the model and
    optimizer left as they were, and training starts at epoch 1 (before: a crash on every retry)."""
    p = params(**{"train.epochs": EPOCHS})
    path = tmp_path / "ckpt.pt"
    ckpt = Checkpoint(path, p, data_dir, "cpu")
    with pytest.raises(Crash):
        run(data, p, ckpt, crash_after=CRASH_AFTER)
    state = checkpoint.load(path, ckpt.fingerprint)
    assert state is not None  # the crashed run's checkpoint fits these params
    if damage == "weights of another shape":
        state["model"]["net.0.weight"] = torch.zeros(3, 3)
    elif damage == "momentum of another shape":
        for entry in state["optimizer"]["state"].values():
            entry["momentum_buffer"] = torch.zeros(2)
    else:
        state["history"] = state["history"][1:]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path.write_bytes(checkpoint.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    messages: list[str] = []
    model = fresh_model()
    optimizer = make_optimizer(model, "sgd", 0.1, 0.9, (0.9, 0.999), 0.0)
    done, tags = Checkpoint(path, p, data_dir, "cpu", log=messages.append).resume(model, optimizer, torch.Generator())
    assert (done, tags) == ([], {})
    assert len(messages) == 1 and "does not fit this training" in messages[0] and "epoch 1" in messages[0]
    assert_fresh(model)
    assert optimizer.state_dict()["state"] == {}
