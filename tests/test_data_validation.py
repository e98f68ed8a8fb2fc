"""Issue 16, data: labels that are not whole numbers are refused (not truncated), images and
labels of different counts are refused even when ``limit`` would hide it, a file that is not
what its name says gets one clear line; each error names the file."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from prunecal.data import load_cifar10
from prunecal.data.cifar10 import load_class_names
from prunecal.data.cifar10c import load_cifar10c


def imgs(n):
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("keys", [("x", "y"), ("x_test", "y_test")])
def test_float_labels_rejected_not_truncated(tmp_path, keys):
    f = tmp_path / "d.npz"
    y = np.arange(10, dtype=np.float64) % 10
    y[4] = 3.7
    np.savez(f, **{keys[0]: imgs(10), keys[1]: y})
    with pytest.raises(ValueError, match=r"d\.npz: .*whole numbers 0\.\.9, got 3\.7 at position 4") as ei:
        load_cifar10(f)
    assert str(f) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(ValueError, match="3.7"):
        load_cifar10(f, limit=2)  # the bad label lies beyond the limit: still refused


def test_whole_float_labels_accepted(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=imgs(4), y=np.array([0.0, 3.0, 9.0, 1.0]))
    x, y = load_cifar10(f)
    assert y.dtype == np.int64 and y.tolist() == [0, 3, 9, 1]


@pytest.mark.parametrize("bad", [np.array([0, 1, np.nan, 2]), np.array([True, False, True, False]),
                                 np.array(["a", "b", "c", "d"])])
def test_other_non_integer_labels_rejected(tmp_path, bad):
    f = tmp_path / "d.npz"
    np.savez(f, x=imgs(4), y=bad)
    with pytest.raises(ValueError, match=str(f).replace(".", r"\.")):
        load_cifar10(f)


@pytest.mark.parametrize("limit", [None, 10, 90, 100])
def test_count_mismatch_rejected_even_under_limit(tmp_path, limit):
    f = tmp_path / "d.npz"
    np.savez(f, x_test=imgs(100), y_test=np.arange(90) % 10)
    with pytest.raises(ValueError, match=r"d\.npz: 100 images \(x_test\) but 90 labels \(y_test\)"):
        load_cifar10(f, limit=limit)


def test_float_labels_in_a_python_batch(tmp_path):
    f = tmp_path / "test_batch"
    data = imgs(5).transpose(0, 3, 1, 2).reshape(5, -1)
    with open(f, "wb") as fh:
        pickle.dump({b"data": data, b"labels": [1, 2, 3.7, 4, 5]}, fh)
    with pytest.raises(ValueError, match=r"test_batch: labels must be whole numbers 0\.\.9, got 3\.7"):
        load_cifar10(f)


def test_text_file_named_npz(tmp_path):
    f = tmp_path / "data.npz"
    f.write_text("just some text, not an archive\n")
    with pytest.raises(ValueError) as ei:
        load_cifar10(f)
    msg = str(ei.value)
    assert msg == f"{f} is not an npz file (not a zip archive of .npy arrays)"
    assert "allow_pickle" not in msg
    npy = tmp_path / "arr.npz"
    with open(npy, "wb") as fh:
        np.save(fh, imgs(2))
    with pytest.raises(ValueError, match=r"is not an npz file \(an \.npy array, not an npz archive\)"):
        load_cifar10(npy)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not an npz file \(empty\)"):
        load_cifar10(empty)
    with pytest.raises(ValueError, match="is not an npz file"):
        load_class_names(f)


def test_text_file_named_npy_in_cifar10c(tmp_path):
    (tmp_path / "fog.npy").write_text("hello\n")
    np.save(tmp_path / "labels.npy", np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"fog\.npy is not an \.npy file \(no \.npy header\)"):
        load_cifar10c(tmp_path, "fog", 1)


def test_float_labels_in_cifar10c(tmp_path):
    np.save(tmp_path / "fog.npy", imgs(10))
    np.save(tmp_path / "labels.npy", np.full(10, 3.7))
    with pytest.raises(ValueError, match=r"labels\.npy"):
        load_cifar10c(tmp_path, "fog", 1)


def test_cli_names_the_file(tmp_path, capsys):
    from prunecal.eval.cli import run

    f = tmp_path / "d.npz"
    f.write_text("text\n")
    out = tmp_path / "o"
    assert run(["--out", str(out), "--data", str(f), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"prunecal-eval: error: {f} is not an npz file (not a zip archive of .npy arrays)"
    g = tmp_path / "g.npz"
    np.savez(g, x=imgs(100), y=np.arange(90) % 10)
    assert run(["--out", str(out), "--data", str(g), "--limit", "50", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "100 images (x) but 90 labels (y)" in err and str(g) in err and len(err.splitlines()) == 1
    assert not (out / "results.sqlite").exists()
