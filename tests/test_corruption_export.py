"""The CIFAR-10-C export read the way the published release's loaders read it (the authors'
evaluation code and RobustBench's ``load_cifar10c``: ``np.load`` of ``<corruption>.npy`` and
``labels.npy``, severity s = rows ``(s - 1) * n .. s * n``, images fed to PIL / torchvision
as uint8 HWC RGB)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prunecal.corruptions import corrupt
from prunecal.corruptions.export import write_cifar10c
from prunecal.data import load_cifar10c

# File names of the published CIFAR-10-C release (Zenodo record 2535967), literal.
PUBLISHED_FILES = ["brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
                   "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate",
                   "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur"]


def official_style_load(root, corruption, severity, n_total):
    """What the published loaders do (written here from their documented convention)."""
    labels = np.load(root / "labels.npy")
    images_all = np.load(root / (corruption + ".npy"))
    images = images_all[(severity - 1) * n_total:severity * n_total]
    return images, labels[(severity - 1) * n_total:severity * n_total]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    x = np.load(__import__("prunecal").__path__[0] + "/assets/cifar10_test500.npz")
    images, labels = x["x_test"][:10], x["y_test"][:10]
    out = tmp_path_factory.mktemp("CIFAR-10-C")
    paths = write_cifar10c(images, labels, out, seed=0)
    return images, labels, out, paths


def test_every_published_file(exported):
    images, labels, out, paths = exported
    assert sorted(p.stem for p in paths) == PUBLISHED_FILES
    assert sorted(p.name for p in out.glob("*.npy")) == sorted([f + ".npy" for f in PUBLISHED_FILES] + ["labels.npy"])
    for f in PUBLISHED_FILES + ["labels"]:
        with open(out / f"{f}.npy", "rb") as fh:
            assert np.lib.format.read_magic(fh) == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        assert dtype == np.uint8 and not fortran
        assert shape == ((50,) if f == "labels" else (50, 32, 32, 3))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_per_severity"] == 10
    assert all(v["faithful_to_published"] for v in manifest["corruptions"].values())


@pytest.mark.parametrize("name", ["frost", "motion_blur", "snow", "gaussian_noise", "contrast"])
def test_official_style_loading(exported, name):
    images, labels, out, _ = exported
    for sev in range(1, 6):
        xs, ys = official_style_load(out, name, sev, n_total=len(images))
        np.testing.assert_array_equal(xs, corrupt(images, name, sev, seed=0))
        np.testing.assert_array_equal(ys, labels)
        # torchvision-style datasets hand each row to PIL
        assert Image.fromarray(xs[3]).size == (32, 32) and Image.fromarray(xs[3]).mode == "RGB"
        # and prunecal's own loader reads the same
        xp, yp = load_cifar10c(out, name, sev)
        np.testing.assert_array_equal(xp, xs)
        np.testing.assert_array_equal(yp, labels)
