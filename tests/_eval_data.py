"""Small data sets the eval tests write: slices of the shipped 500 original-pixel test images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prunecal.eval import config as C


def write_split(path: Path, train: slice, test: slice) -> Path:
    """An npz with ``x_train``/``y_train`` and ``x_test``/``y_test`` cut from the shipped images
    (disjoint slices: no evaluated image is trained on)."""
    z = np.load(C.DEFAULT_DATA)
    x, y = (z["x"], z["y"]) if "x" in z else (z["x_test"], z["y_test"])
    np.savez(path, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    return path
