"""Training loop and fine-tuning on a few hundred generated images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunecal.prune import finetune, get_masks, prune
from prunecal.train import evaluate, train

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _data(n=256, seed=0, size=16):
    """Two easy classes: a reddish or a bluish image with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    base = np.where(y[:, None], [60, 80, 200], [200, 80, 60]).astype(np.float64)
    x = base[:, None, None, :] + rng.normal(0, 40, (n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_loss_decreases_and_history():
    x, y = _data()
    model = Small()
    vx, vy = _data(64, seed=1)
    hist = train(model, x, y, epochs=2, lr=0.05, batch_size=32, mean=MEAN, std=STD,
                 val=(vx, vy), progress=False)
    assert hist["epoch"] == [1, 2] and len(hist["val_acc"]) == 2
    assert len(hist["step_loss"]) == 2 * (256 // 32)
    assert np.mean(hist["step_loss"][-4:]) < np.mean(hist["step_loss"][:4])
    assert hist["val_acc"][-1] > 0.8
    assert not model.training
    assert evaluate(model, vx, vy, MEAN, STD) == pytest.approx(hist["val_acc"][-1])


def test_evaluate_matches_manual():
    x, y = _data(50)
    model = Small().eval()
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        ref = float((model(xt).argmax(1).numpy() == y).mean())
    assert evaluate(model, x, y, MEAN, STD, batch_size=16) == pytest.approx(ref)


def test_deterministic_per_seed():
    x, y = _data(96)
    a, b = Small(), Small()
    b.load_state_dict(a.state_dict())
    ha = train(a, x, y, epochs=1, lr=0.05, batch_size=32, mean=MEAN, std=STD, seed=3, progress=False)
    hb = train(b, x, y, epochs=1, lr=0.05, batch_size=32, mean=MEAN, std=STD, seed=3, progress=False)
    assert ha["step_loss"] == hb["step_loss"]
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va, vb)


def test_channels_last_same_training_and_contiguous_weights_after():
    """NHWC training (default, for CPU speed) computes the same steps as NCHW up to float
    rounding, and hands back ordinary contiguous weights, also when training fails."""
    x, y = _data(96)
    a, b = Small(), Small()
    b.load_state_dict(a.state_dict())
    kw = dict(epochs=1, lr=0.05, batch_size=32, mean=MEAN, std=STD, seed=1, progress=False)
    ha = train(a, x, y, channels_last=True, **kw)
    hb = train(b, x, y, channels_last=False, **kw)
    np.testing.assert_allclose(ha["step_loss"], hb["step_loss"], rtol=1e-4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)
        assert va.is_contiguous(), k
    with pytest.raises(FloatingPointError):
        train(a, x, y, **{**kw, "lr": 1e30, "epochs": 3})
    assert all(p.is_contiguous() for p in a.parameters())


@pytest.mark.parametrize("method", ["global_magnitude", "random"])
def test_finetune_keeps_masks_fixed(method):
    x, y = _data(128)
    pruned = prune(Small(), method, 0.6)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    masks = get_masks(pruned)
    tuned = finetune(pruned, x, y, epochs=1, lr=0.05, batch_size=32, mean=MEAN, std=STD,
                     progress=False)
    after = get_masks(tuned)
    for n in masks:
        assert torch.equal(after[n], masks[n]), n  # no pruned weight revived, none lost
    assert not torch.equal(tuned.conv2.weight, pruned.conv2.weight)  # it did train
    for k, v in pruned.state_dict().items():  # input untouched
        assert torch.equal(v, before[k])
    assert len(tuned.finetune_history["loss"]) == 1


def test_finetune_structured_and_progress_bar():
    x, y = _data(64)
    pruned = prune(Small(), "l1_filter", 0.5)
    tuned = finetune(pruned, x, y, epochs=1, batch_size=32, mean=MEAN, std=STD, progress=True)
    assert tuned.conv1.out_channels == 4
    assert tuned(torch.zeros(1, 3, 16, 16)).shape == (1, 2)


def test_bad_arguments():
    x, y = _data(32)
    m = Small()
    kw = dict(mean=MEAN, std=STD, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train(m, x, y, epochs=0, lr=0.1, **kw)
    with pytest.raises(ValueError, match="lr"):
        train(m, x, y, epochs=1, lr=float("nan"), **kw)
    with pytest.raises(ValueError, match="batch_size"):
        train(m, x, y, epochs=1, lr=0.1, batch_size=0, **kw)
    with pytest.raises(ValueError, match="labels"):
        train(m, x, y[:5], epochs=1, lr=0.1, **kw)
    with pytest.raises(TypeError, match="uint8"):
        train(m, x.astype(np.float32), y, epochs=1, lr=0.1, **kw)
    with pytest.raises(ValueError, match="masks"):
        train(m, x, y, epochs=1, lr=0.1, masks={"nope": torch.ones(1)}, **kw)
    with pytest.raises(TypeError, match="val"):
        train(m, x, y, epochs=1, lr=0.1, val=x, **kw)
    xs, ys = _data(128)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(m, xs, ys, epochs=2, lr=1e30, batch_size=32, **kw)
    with pytest.raises(TypeError, match="model"):
        finetune("model", x, y, **kw)


@pytest.mark.parametrize("name,kw", [("vgg11_bn", {"width_mult": 0.125}),
                                     ("mobilenetv2", {"width_mult": 0.25})])
def test_trains_cifar_nets_on_real_jpeg_training_set(name, kw, shared_data):
    """The issue's use: VGG / MobileNetV2 from scratch on the JPEG training set. A few
    batches only (full training is hours): the loop runs, the loss is finite, and the
    weights move while the eval-mode model still predicts 10 classes."""
    from prunecal import models
    from prunecal.data import load_cifar10

    x, y = load_cifar10(shared_data / "cifar10" / "train_jpeg.npz", "train", limit=96)
    assert x.shape == (96, 32, 32, 3) and set(np.unique(y)) <= set(range(10))
    s = models.spec(name)
    net = models.create(name, **kw)
    w0 = next(net.parameters()).detach().clone()
    hist = train(net, x, y, epochs=1, lr=np.float32(0.05), batch_size=32, mean=s.mean,
                 std=s.std, progress=False)
    assert len(hist["step_loss"]) == 3 and all(np.isfinite(hist["step_loss"]))
    assert hist["step_loss"][0] == pytest.approx(np.log(10), rel=0.5)  # starts near chance
    assert not torch.equal(next(net.parameters()), w0) and not net.training
    # evaluate() is the eval-mode top-1 accuracy: recomputed here with torch on the normalised images
    xt = torch.from_numpy(x[:32]).permute(0, 3, 1, 2).float() / 255.0
    xt = (xt - torch.tensor(s.mean).view(1, 3, 1, 1)) / torch.tensor(s.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net(xt)
        ref = float((logits.argmax(1).numpy() == y[:32]).mean())
    assert logits.shape == (32, 10) and torch.isfinite(logits).all()
    assert evaluate(net, x[:32], y[:32], s.mean, s.std, batch_size=32) == pytest.approx(ref, abs=1e-12)
    assert not net.training  # mode restored
    # the three steps updated BatchNorm's running statistics (the eval-mode net is the trained one)
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 3 and float(bn.running_mean.abs().max()) > 0
