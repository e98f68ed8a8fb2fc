"""Tests of prunecal.corruptions.cache.CorruptionCache: hits, invalidation, atomic writes."""
from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

import prunecal.corruptions as pc
from prunecal.corruptions import CorruptionCache, corrupt
from prunecal.corruptions import cache as cache_mod


@pytest.fixture()
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)


@pytest.fixture()
def counted(monkeypatch):
    """Count calls of corrupt() made by the cache."""
    calls = []

    def wrapped(*a, **k):
        calls.append(a[1:3])
        return corrupt(*a, **k)

    monkeypatch.setattr(cache_mod, "corrupt", wrapped)
    return calls


@pytest.fixture()
def counted_suite(monkeypatch):
    """Count calls of corrupt() made through iter_suite (the export path)."""
    calls = []

    def wrapped(*a, **k):
        calls.append(a[1:3])
        return corrupt(*a, **k)

    monkeypatch.setattr(pc, "corrupt", wrapped)
    return calls


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_hit_returns_identical_without_regenerating(tmp_path, images, counted):
    c = CorruptionCache(tmp_path)
    a = c.get(images, "gaussian_noise", 3, seed=2)
    np.testing.assert_array_equal(a, corrupt(images, "gaussian_noise", 3, seed=2))
    b = c.get(images, "gaussian_noise", 3, seed=2)
    np.testing.assert_array_equal(a, b)
    assert len(counted) == 1 and (c.hits, c.misses) == (1, 1)
    # a fresh cache object (another process) reads the same entry
    c2 = CorruptionCache(tmp_path)
    np.testing.assert_array_equal(c2.get(images, "gaussian_noise", 3, seed=2), a)
    assert len(counted) == 1
    b[0] = 0  # returned arrays are the caller's to modify
    np.testing.assert_array_equal(c2.get(images, "gaussian_noise", 3, seed=2), a)


def test_key_covers_data_name_severity_seed(tmp_path, images, counted):
    c = CorruptionCache(tmp_path)
    c.get(images, "fog", 1)
    c.get(images, "fog", 2)
    c.get(images, "fog", 1, seed=1)
    c.get(images, "frost", 1)
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    c.get(other, "fog", 1)
    c.get(images[:5], "fog", 1)
    assert len(counted) == 6
    c.get(images, "fog", 1)
    assert len(counted) == 6


def test_code_version_invalidates(tmp_path, images, counted, monkeypatch):
    c = CorruptionCache(tmp_path)
    c.get(images, "contrast", 2)
    monkeypatch.setattr(cache_mod, "CODE_VERSION", "test-bump")
    c.get(images, "contrast", 2)
    assert len(counted) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "flip_byte", "no_checksum", "empty"])
def test_damaged_file_is_regenerated(tmp_path, images, counted, damage):
    c = CorruptionCache(tmp_path)
    good = c.get(images, "shot_noise", 4)
    path = c.path(images, "shot_noise", 4)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file" * 10)
    elif damage == "wrong_shape":
        np.save(path, good[:3])
    elif damage == "flip_byte":  # a silently corrupted payload: only the checksum sees it
        path.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:])
    elif damage == "no_checksum":
        path.with_suffix(".sha256").unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    again = c.get(images, "shot_noise", 4)
    np.testing.assert_array_equal(again, good)
    assert len(counted) == 2
    c.get(images, "shot_noise", 4)  # repaired on disk
    assert len(counted) == 2


def test_atomic_write_leaves_no_temp_files(tmp_path, images):
    c = CorruptionCache(tmp_path)
    for name in ("pixelate", "snow"):
        c.get(images, name, 5)
    files = _files(tmp_path)
    assert len(files) == 4 and all(f.endswith((".npy", ".sha256")) for f in files), files
    assert not any(".tmp" in f for f in files)


def test_failed_write_leaves_nothing(tmp_path, images, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.np, "save", boom)
    c = CorruptionCache(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        c.get(images, "brightness", 1)
    assert not c.path(images, "brightness", 1).exists()
    assert not any(".tmp" in f for f in _files(tmp_path))


def test_bad_arguments(tmp_path, images):
    c = CorruptionCache(tmp_path)
    with pytest.raises(pc.UnknownNameError):
        c.get(images, "nope", 1)
    with pytest.raises(ValueError, match="severity"):
        c.get(images, "fog", 9)
    with pytest.raises(TypeError, match="uint8"):
        c.get(images.astype(np.float32), "fog", 1)
    assert _files(tmp_path) == []


def test_single_image_and_clear(tmp_path, images):
    c = CorruptionCache(tmp_path)
    one = c.get(images[0], "zoom_blur", 2)
    np.testing.assert_array_equal(one, corrupt(images[0], "zoom_blur", 2))
    np.testing.assert_array_equal(c.get(images[0], "zoom_blur", 2), one)
    assert c.clear() == 1 and _files(tmp_path) == []


def _worker(args):
    root, seed = args
    x = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    return CorruptionCache(root).get(x, "glass_blur", 3, seed=seed).tobytes()


def test_two_processes_same_entry(tmp_path):
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    with ctx.Pool(2) as pool:
        outs = pool.map(_worker, [(str(tmp_path), 1)] * 4)
    assert len(set(outs)) == 1
    files = _files(tmp_path)
    assert len(files) == 2 and not any(".tmp" in f for f in files)
    x = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    assert CorruptionCache(tmp_path).get(x, "glass_blur", 3, seed=1).tobytes() == outs[0]


# ---------------------------------------------------------------- CIFAR-10-C layout export

def test_write_cifar10c_layout_and_resume(tmp_path, images, counted_suite):
    from prunecal.corruptions.export import write_cifar10c

    labels = np.arange(6) % 10
    out = tmp_path / "c10c"
    paths = write_cifar10c(images, labels, out, ["fog", "pixelate"], seed=4)
    assert [p.name for p in paths] == ["fog.npy", "pixelate.npy"]
    fog = np.load(out / "fog.npy")
    assert fog.shape == (30, 32, 32, 3) and fog.dtype == np.uint8
    for s in range(1, 6):
        np.testing.assert_array_equal(fog[(s - 1) * 6:s * 6], corrupt(images, "fog", s, seed=4))
    lab = np.load(out / "labels.npy")
    assert lab.dtype == np.uint8 and lab.tolist() == labels.tolist() * 5
    assert len(counted_suite) == 10
    # rerun: nothing regenerated; a new corruption only generates itself
    write_cifar10c(images, labels, out, ["fog", "pixelate"], seed=4)
    assert len(counted_suite) == 10
    write_cifar10c(images, labels, out, ["fog", "contrast"], seed=4)
    assert len(counted_suite) == 15
    # a damaged file is regenerated; another seed regenerates everything asked for
    (out / "fog.npy").write_bytes(b"\x93NUMPY broken")
    write_cifar10c(images, labels, out, ["fog", "contrast"], seed=4)
    assert len(counted_suite) == 20
    write_cifar10c(images, labels, out, ["fog"], seed=5)
    assert len(counted_suite) == 25
    assert not any(".tmp" in f for f in _files(out))
    mode = (out / "fog.npy").stat().st_mode & 0o777
    assert mode & 0o044  # not the 0600 of a temp file


def test_write_cifar10c_interrupted(tmp_path, images, monkeypatch):
    from prunecal.corruptions.export import write_cifar10c

    real = pc.corrupt
    seen = []

    def dies_on_contrast(x, name, sev, seed=0, **k):
        if name == "contrast" and sev == 4:
            raise KeyboardInterrupt
        seen.append(name)
        return real(x, name, sev, seed, **k)

    monkeypatch.setattr(pc, "corrupt", dies_on_contrast)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        write_cifar10c(images, np.zeros(6, int), out, ["fog", "contrast"])
    assert sorted(_files(out)) == ["fog.npy", "labels.npy", "manifest.json"]
    monkeypatch.setattr(pc, "corrupt", real)
    write_cifar10c(images, np.zeros(6, int), out, ["fog", "contrast"])
    assert sorted(_files(out)) == ["contrast.npy", "fog.npy", "labels.npy", "manifest.json"]


def test_write_cifar10c_bad_input(tmp_path, images):
    from prunecal.corruptions.export import write_cifar10c

    with pytest.raises(ValueError, match="labels"):
        write_cifar10c(images, np.zeros(5, int), tmp_path)
    with pytest.raises(ValueError, match="labels"):
        write_cifar10c(images, np.zeros(6), tmp_path)
    with pytest.raises(ValueError, match="0..255"):
        write_cifar10c(images, np.full(6, 300), tmp_path)
    with pytest.raises(pc.UnknownNameError):
        write_cifar10c(images, np.zeros(6, int), tmp_path, ["fgo"])
    with pytest.raises(ValueError, match="batch"):
        write_cifar10c(images[0], np.zeros(1, int), tmp_path)


def test_cli(tmp_path, images, capsys):
    from prunecal.corruptions.__main__ import main

    data = tmp_path / "d.npz"
    np.savez(data, x_test=images, y_test=np.arange(6))
    assert main([str(tmp_path / "o"), "--data", str(data), "--names", "contrast", "--limit", "4"]) == 0
    assert np.load(tmp_path / "o" / "contrast.npy").shape == (20, 32, 32, 3)
    assert "1 corruption files" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        main([str(tmp_path / "o"), "--data", str(tmp_path / "missing.npz")])
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="not a readable"):
        main([str(tmp_path / "o"), "--data", str(tmp_path / "bad.npz")])
    np.savez(tmp_path / "k.npz", a=images)
    with pytest.raises(SystemExit, match="images-key|labels-key"):
        main([str(tmp_path / "o"), "--data", str(tmp_path / "k.npz")])


def test_indices_are_part_of_the_key(tmp_path, images, counted):
    """The same images under different index sets never share an entry (stochastic corruption)."""
    c = CorruptionCache(tmp_path)
    ia, ib = np.array([3, 8, 1, 20, 5, 11]), np.array([3, 8, 1, 20, 5, 12])
    a = c.get(images, "gaussian_noise", 2, indices=ia)
    b = c.get(images, "gaussian_noise", 2, indices=ib)
    assert len(counted) == 2 and (c.hits, c.misses) == (0, 2)
    assert c.path(images, "gaussian_noise", 2, indices=ia) != c.path(images, "gaussian_noise", 2, indices=ib)
    assert c.path(images, "gaussian_noise", 2, indices=ia) != c.path(images, "gaussian_noise", 2)
    np.testing.assert_array_equal(a, corrupt(images, "gaussian_noise", 2, indices=ia))
    np.testing.assert_array_equal(b, corrupt(images, "gaussian_noise", 2, indices=ib))
    np.testing.assert_array_equal(a[:5], b[:5])  # same index -> same corruption
    assert (a[5] != b[5]).any()
    # positional keying (no indices) is its own entry, not served the indexed one
    np.testing.assert_array_equal(c.get(images, "gaussian_noise", 2), corrupt(images, "gaussian_noise", 2))
    assert len(counted) == 3
    # hits: same index set (any int dtype / list) -> same entry
    np.testing.assert_array_equal(c.get(images, "gaussian_noise", 2, indices=ia.astype(np.int32).tolist()), a)
    assert len(counted) == 3 and c.hits == 1
    # indices 0..N-1 give the output of no indices and share its entry; so do deterministic ones
    c.get(images, "gaussian_noise", 2, indices=np.arange(6))
    c.get(images, "pixelate", 2)
    c.get(images, "pixelate", 2, indices=ia)
    assert len(counted) == 4
    with pytest.raises(ValueError, match="one entry per image"):
        c.get(images, "gaussian_noise", 2, indices=ia[:3])
