"""Temperature scaling: recovers a known temperature, lowers NLL, checks input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import check_grad, minimize_scalar

from prunecal import calibrate as C
from prunecal import metrics as M


def _sample(n, c, t_true, seed=0, scale=4.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * scale
    p = M.softmax(z / t_true)
    y = np.minimum((rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1), c - 1)
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_recovers_known_temperature(t_true):
    z, y = _sample(20_000, 10, t_true, seed=int(t_true * 10))
    t = C.fit_temperature(z, y)
    assert t > 0
    assert t == pytest.approx(t_true, rel=0.05)
    # the fitted T is the NLL minimiser (independent 1-D search on T)
    ref = minimize_scalar(lambda s: F.cross_entropy(torch.tensor(z / s), torch.tensor(y)).item(),
                          bounds=(0.05, 20), method="bounded", options={"xatol": 1e-8}).x
    assert t == pytest.approx(ref, rel=1e-4)


def test_analytic_gradient():
    z, y = _sample(500, 5, 2.0)
    for u in (-1.0, 0.0, 0.7):
        err = check_grad(lambda v: C._nll_and_grad(v, z, y)[0], lambda v: C._nll_and_grad(v, z, y)[1], np.array([u]))
        assert err < 1e-5


def test_nll_decreases_and_report():
    z, y = _sample(4000, 10, 3.0, seed=1)  # model is overconfident by a factor 3
    zv, yv, zt, yt = z[:2000], y[:2000], z[2000:], y[2000:]
    t = C.fit_temperature(zv, yv)
    assert C.temperature_nll(zv, yv, t) <= C.temperature_nll(zv, yv, 1.0)
    assert C.temperature_nll(zv, yv, t) == pytest.approx(
        F.cross_entropy(torch.tensor(zv / t), torch.tensor(yv)).item(), rel=1e-10)
    rep = C.calibration_report(zv, yv, zt, yt)
    assert rep["temperature"] == pytest.approx(t)
    assert rep["after"]["nll"] < rep["before"]["nll"]
    assert rep["after"]["ece"] < rep["before"]["ece"]
    assert rep["after"]["accuracy"] == rep["before"]["accuracy"]  # T > 0 keeps the argmax


def test_scaler_and_apply_temperature():
    z, y = _sample(1000, 4, 2.0)
    s = C.TemperatureScaler()
    with pytest.raises(RuntimeError, match="not fitted"):
        s.transform(z)
    s.fit(z, y)
    assert s.temperature_ == pytest.approx(C.fit_temperature(z, y))
    np.testing.assert_allclose(s.transform(z), z / s.temperature_)
    np.testing.assert_allclose(s.predict_proba(z), M.softmax(z / s.temperature_), rtol=1e-12)
    zt = torch.tensor(z, dtype=torch.float32)
    out = C.apply_temperature(zt, 2.0)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, zt / 2)
    assert "TemperatureScaler" in repr(s)


def test_torch_inputs_and_separable_data():
    z, y = _sample(500, 3, 1.0)
    t_np = C.fit_temperature(z, y)
    assert C.fit_temperature(torch.tensor(z), torch.tensor(y)) == pytest.approx(t_np)
    # perfectly separable: NLL falls as T -> 0; the fit sharpens until the NLL is ~0, within bounds
    zs = np.eye(3)[[0, 1, 2] * 10] * 5.0
    ts = C.fit_temperature(zs, [0, 1, 2] * 10)
    assert C.T_BOUNDS[0] <= ts < 1.0
    assert C.temperature_nll(zs, [0, 1, 2] * 10, ts) < 1e-6


def test_bad_input():
    z, y = _sample(10, 3, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        C.fit_temperature(np.full((2, 3), np.nan), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        C.fit_temperature(z, np.full(10, 3))
    with pytest.raises(ValueError, match="mismatch"):
        C.fit_temperature(z, y[:5])
    with pytest.raises(ValueError, match="empty"):
        C.fit_temperature(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="temperature"):
        C.apply_temperature(z, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        C.apply_temperature(z, float("nan"))
    with pytest.raises(ValueError, match="shape"):
        C.apply_temperature(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="max_iter"):
        C.fit_temperature(z, y, max_iter=0)
    with pytest.raises(ValueError, match="max_iter"):
        C.fit_temperature(z, y, max_iter="10")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_apply_temperature_torch_rejects_non_finite(bad):
    """torch tensors are not converted to numpy, so they get their own finiteness check."""
    zt = torch.zeros(4, 3)
    zt[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        C.apply_temperature(zt, 2.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        C.apply_temperature(zt.numpy(), 2.0)
    with pytest.raises(TypeError, match="floating"):
        C.apply_temperature(torch.zeros(4, 3, dtype=torch.int64), 2.0)
    # autograd and dtype survive for good input
    ok = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = C.apply_temperature(ok, 2.0)
    assert out.dtype == torch.float64 and out.requires_grad


@pytest.fixture(scope="module")
def resnet20_logits(shared_data):
    """Logits of the pretrained ResNet-20 on 600 images of the JPEG CIFAR-10 test set (shifted
    domain: the network is over-confident there, ECE about 12 %)."""
    from prunecal import models  # part of the package: never skipped
    w = shared_data / "weights" / "resnet20-12fca82f.th"
    d = np.load(shared_data / "cifar10" / "test.npz")
    x, y = d["x"][:600], d["y"][:600].astype(np.int64)
    model = models.create("resnet20", weights=str(w)).eval()
    s = models.spec("resnet20")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    xt = (xt - torch.tensor(s.mean).view(1, 3, 1, 1)) / torch.tensor(s.std).view(1, 3, 1, 1)
    with torch.no_grad():
        z = model(xt)
    return z, torch.from_numpy(y)


def test_real_resnet20_temperature_scaling(resnet20_logits):
    z, y = resnet20_logits
    rep = C.calibration_report(z[:300], y[:300], z[300:], y[300:])
    assert rep["temperature"] > 1.0  # over-confident under the JPEG shift
    assert rep["before"]["accuracy"] > 0.7
    assert rep["after"]["nll"] < rep["before"]["nll"]
    assert rep["after"]["ece"] < rep["before"]["ece"]
    assert rep["after"]["overconfidence"] < rep["before"]["overconfidence"]
    acc = M.MetricAccumulator(10)
    for i in range(0, 600, 64):
        acc.update(z[i:i + 64], y[i:i + 64])
    one = M.summary_from_logits(z, y)
    got = acc.compute()
    for k in ("ece", "nll", "brier", "aurc", "classwise_ece", "ace"):
        assert got[k] == pytest.approx(one[k], rel=1e-9)
