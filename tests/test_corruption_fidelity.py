"""Fidelity of prunecal's corruptions as a network sees them: the shipped ResNet-20's accuracy
on the first N shipped original-pixel CIFAR-10 test images under every corruption and
severity, against the table measured with an independent implementation of the published
generator (``scripts/make_corruption_reference.py``: scikit-image / SciPy / OpenCV / Pillow,
ImageMagick through Wand, the published frost pictures; ``tests/data/corruption_reference.json``).

Tolerance from sampling noise: for a fixed image set, the accuracy of one random draw of a
stochastic corruption varies with the draw; with p_i the fraction of the reference's R draws
in which image i is classified correctly, one draw's accuracy has variance
``V = sum_i p_i (1 - p_i) / N^2 * R / (R - 1)``, so prunecal's single draw (seed 0) minus the
reference's mean of R draws has variance ``V (1 + 1 / R)``; the test allows 4 standard
deviations (95 cells: a false alarm well under 1 %) plus one image. Deterministic corruptions
(V = 0) may differ by at most 2 images (one-level rounding differences, see docs/corruptions.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import prunecal
from prunecal import models
from prunecal.corruptions import BENCHMARK, EXTRA, corrupt
from prunecal.data import to_tensor

TABLE = Path(__file__).resolve().parent / "data" / "corruption_reference.json"
ASSETS = Path(prunecal.__file__).resolve().parent / "assets"
N = 300  # images (a prefix of the table's)
Z = 4.0  # standard deviations allowed
ALL = list(BENCHMARK) + list(EXTRA)


def _bits(h: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8))[:n].astype(bool)


@pytest.fixture(scope="module")
def setup():
    table = json.loads(TABLE.read_text())
    n_table = table["meta"]["n_images"]
    assert n_table >= N
    z = np.load(ASSETS / "cifar10_test500.npz")
    x, y = z["x_test"][:N], z["y_test"][:N]
    net = models.create("resnet20", weights=str(ASSETS / "resnet20-12fca82f.th"))
    spec = models.spec("resnet20")

    def correct(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (net(to_tensor(images, spec.mean, spec.std)).argmax(1).numpy() == y)

    return table, x, correct


def reference_stats(runs: list[str], n: int) -> tuple[float, float, int]:
    """(mean accuracy over the runs, std of one run's accuracy, number of runs) on the first n."""
    ok = np.stack([_bits(h, n) for h in runs]).astype(float)  # (R, n)
    r = ok.shape[0]
    p = ok.mean(0)
    var = (p * (1 - p)).sum() / n ** 2 * (r / (r - 1) if r > 1 else 0.0)
    return float(ok.mean()), float(np.sqrt(var)), r


def tolerance(sd: float, r: int, n: int) -> float:
    return Z * sd * np.sqrt(1 + 1 / r) + 1 / n if r > 1 else 2 / n + 1e-9


@pytest.mark.slow
def test_accuracy_matches_published_generator(setup):
    """Every corruption x severity: prunecal's accuracy within sampling noise of the reference's."""
    table, x, correct = setup
    torch.set_num_threads(min(2, torch.get_num_threads()))
    clean = correct(x).mean()
    assert abs(clean - _bits(table["clean"], N).mean()) <= 1 / N + 1e-9  # same network and images (1 image: float ties)
    bad = []
    rows = []
    for name in ALL:
        for sev in range(1, 6):
            mean, sd, r = reference_stats(table["reference"][name][sev - 1], N)
            acc = float(correct(corrupt(x, name, sev, seed=0)).mean())
            tol = tolerance(sd, r, N)
            rows.append(f"{name} {sev}: prunecal {100 * acc:.1f} reference {100 * mean:.1f} tol {100 * tol:.1f}")
            if abs(acc - mean) > tol:
                bad.append(rows[-1])
    assert not bad, "\n".join(bad)


def test_table_covers_everything():
    table = json.loads(TABLE.read_text())
    meta = table["meta"]
    assert meta["n_images"] >= N and meta["repeats"] >= 4
    assert "ImageMagick" in meta["versions"]["imagemagick"]
    for name in ALL:
        runs = table["reference"][name]
        assert len(runs) == 5
        for sev_runs in runs:
            assert len(sev_runs) == (1 if name in {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                                                   "jpeg_compression", "gaussian_blur", "saturate"}
                                     else meta["repeats"])
            assert all(len(h) == 2 * ((meta["n_images"] + 7) // 8) for h in sev_runs)


def test_noise_model():
    """The per-image pooled variance estimates the spread of one draw's accuracy (simulated
    draws with known per-image probabilities), and deterministic cells allow 2 images."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.2, 0.9, size=400)
    runs = [np.packbits(rng.random(400) < p).tobytes().hex() for _ in range(8)]
    mean, sd, r = reference_stats(runs, 400)
    assert r == 8 and mean == pytest.approx(p.mean(), abs=0.03)
    assert sd == pytest.approx(np.sqrt((p * (1 - p)).sum()) / 400, rel=0.25)
    assert tolerance(sd, r, 400) < 0.15
    assert tolerance(0.0, 1, 400) == pytest.approx(2 / 400)
