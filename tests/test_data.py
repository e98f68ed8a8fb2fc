"""prunecal.data: CIFAR-10 in every accepted layout, CIFAR-10-C, tensors, batches, augmentation."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from prunecal import data
from prunecal.data import (CLASS_NAMES, iterate_batches, load_cifar10, load_cifar10c, random_crop_flip,
                           to_tensor)

RNG = np.random.default_rng(1234)
N_BATCH = 6  # images per official training batch in the synthetic folders
N_TEST = 20


def rand_images(n: int, rng=RNG) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def to_rows(x: np.ndarray) -> np.ndarray:
    """NHWC -> the official (N, 3072) row-major CHW layout."""
    return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)


def write_py_batch(path, x, y) -> None:
    d = {b"batch_label": b"testing batch", b"labels": [int(v) for v in y], b"data": to_rows(x),
         b"filenames": [f"img_{i}.png".encode() for i in range(len(y))]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_bin_batch(path, x, y) -> None:
    rec = np.concatenate([y.astype(np.uint8)[:, None], to_rows(x)], axis=1)
    rec.tofile(path)


@pytest.fixture(scope="module")
def dataset():
    """Synthetic CIFAR-10: 5 train batches of N_BATCH and a test batch of N_TEST images."""
    rng = np.random.default_rng(7)
    train = [rand_images(N_BATCH, rng) for _ in range(5)]
    test = rand_images(N_TEST, rng)
    return train, test


@pytest.fixture(scope="module")
def py_root(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("py")
    d = root / "cifar-10-batches-py"
    d.mkdir()
    train, test = dataset
    for i, (x, y) in enumerate(train, 1):
        write_py_batch(d / f"data_batch_{i}", x, y)
    write_py_batch(d / "test_batch", *test)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CLASS_NAMES[::-1]], b"num_vis": 3072}, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def bin_root(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("bin")
    d = root / "cifar-10-batches-bin"
    d.mkdir()
    train, test = dataset
    for i, (x, y) in enumerate(train, 1):
        write_bin_batch(d / f"data_batch_{i}.bin", x, y)
    write_bin_batch(d / "test_batch.bin", *test)
    (d / "batches.meta.txt").write_text("\n".join(CLASS_NAMES) + "\n\n")
    return root


def train_arrays(dataset):
    train, _ = dataset
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])


# ---------------------------------------------------------------- official folders

@pytest.mark.parametrize("fmt", ["py", "bin"])
@pytest.mark.parametrize("where", ["parent", "folder"])
def test_official_folders(fmt, where, dataset, py_root, bin_root):
    root = py_root if fmt == "py" else bin_root
    path = root if where == "parent" else root / f"cifar-10-batches-{fmt}"
    x, y = load_cifar10(path, "test")
    assert x.dtype == np.uint8 and x.shape == (N_TEST, 32, 32, 3) and x.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x, dataset[1][0])
    np.testing.assert_array_equal(y, dataset[1][1])
    xt, yt = load_cifar10(path, "train")
    ex, ey = train_arrays(dataset)
    np.testing.assert_array_equal(xt, ex)
    np.testing.assert_array_equal(yt, ey)


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_single_batch_file(fmt, dataset, py_root, bin_root):
    f = (py_root / "cifar-10-batches-py" / "data_batch_3") if fmt == "py" else \
        (bin_root / "cifar-10-batches-bin" / "data_batch_3.bin")
    x, y = load_cifar10(f, "train")
    np.testing.assert_array_equal(x, dataset[0][2][0])
    np.testing.assert_array_equal(y, dataset[0][2][1])


@settings(max_examples=15, deadline=None)
@given(idx=st.lists(st.integers(-5 * N_BATCH, 5 * N_BATCH - 1), max_size=12),
       limit=st.none() | st.integers(0, 40), fmt=st.sampled_from(["py", "bin"]))
def test_indices_and_limit(idx, limit, fmt, dataset, py_root, bin_root):
    root = py_root if fmt == "py" else bin_root
    ex, ey = train_arrays(dataset)
    x, y = load_cifar10(root, "train", indices=idx, limit=limit)
    want = np.asarray(idx, dtype=np.int64)[:limit]
    np.testing.assert_array_equal(x, ex[want])
    np.testing.assert_array_equal(y, ey[want])
    x, y = load_cifar10(root, "train", limit=limit)
    np.testing.assert_array_equal(x, ex[:limit])


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_limit_zero_and_empty_indices(fmt, py_root, bin_root):
    root = py_root if fmt == "py" else bin_root
    for kw in ({"limit": 0}, {"indices": []}):
        x, y = load_cifar10(root, "train", **kw)
        assert x.shape == (0, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (0,) and y.dtype == np.int64


def test_bad_indices_limit_split(py_root):
    with pytest.raises(ValueError, match="out of range"):
        load_cifar10(py_root, indices=[0, N_TEST])
    with pytest.raises(ValueError, match="indices"):
        load_cifar10(py_root, indices=[[0, 1]])
    with pytest.raises(ValueError, match="indices"):
        load_cifar10(py_root, indices=[0.5])
    with pytest.raises(ValueError, match="limit"):
        load_cifar10(py_root, limit=-1)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(py_root, "validation")


def test_official_numpy1_pickle_module_path(tmp_path, dataset):
    """The released batches were pickled by numpy 1 (``numpy.core.multiarray``)."""
    p = tmp_path / "test_batch"
    write_py_batch(p, *dataset[1])
    raw = p.read_bytes()
    assert b"numpy._core.multiarray" in raw
    p.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = load_cifar10(p)
    np.testing.assert_array_equal(x, dataset[1][0])


def test_class_names(py_root, bin_root, tmp_path):
    assert data.load_class_names(py_root) == CLASS_NAMES[::-1]  # read from batches.meta
    assert data.load_class_names(bin_root / "cifar-10-batches-bin") == CLASS_NAMES
    assert data.load_class_names(tmp_path) == CLASS_NAMES  # default
    assert data.load_class_names() == CLASS_NAMES
    (tmp_path / "batches.meta").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="batches.meta"):
        data.load_class_names(tmp_path)


def test_incomplete_folder_names_missing_batch(tmp_path, dataset):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in (1, 2, 4, 5):
        write_py_batch(d / f"data_batch_{i}", *dataset[0][i - 1])
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")


# ---------------------------------------------------------------- npz layouts

def test_npz_exact_subset_layout(tmp_path, dataset):
    (xtr, ytr), (xte, yte) = train_arrays(dataset), dataset[1]
    p = tmp_path / "exact_subset.npz"
    np.savez(p, x_test=xte, y_test=yte, x_train=xtr, y_train=ytr, class_names=np.array(CLASS_NAMES))
    x, y = load_cifar10(p, "test")
    np.testing.assert_array_equal(x, xte)
    np.testing.assert_array_equal(y, yte)
    x, y = load_cifar10(p, "train", indices=[3, 1])
    np.testing.assert_array_equal(x, xtr[[3, 1]])
    assert data.load_class_names(tmp_path) == CLASS_NAMES


def test_npz_xy_layout_and_folder(tmp_path, dataset):
    xte, yte = dataset[1]
    np.savez_compressed(tmp_path / "test.npz", x=xte, y=yte)
    for path in (tmp_path / "test.npz", tmp_path):
        x, y = load_cifar10(path, "test", limit=7)
        np.testing.assert_array_equal(x, xte[:7])
        np.testing.assert_array_equal(y, yte[:7])


def jpeg_npz(path, x, y, quality=75):
    blobs = []
    for im in x:
        b = io.BytesIO()
        Image.fromarray(im).save(b, format="JPEG", quality=quality)
        blobs.append(np.frombuffer(b.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, y=y, class_names=np.array(CLASS_NAMES))
    return blobs


@pytest.mark.parametrize("workers", [1, 3])
def test_npz_jpeg_layout(tmp_path, dataset, workers):
    x0, y0 = train_arrays(dataset)
    blobs = jpeg_npz(tmp_path / "train_jpeg.npz", x0, y0)
    ref = np.stack([np.asarray(Image.open(io.BytesIO(b.tobytes())).convert("RGB")) for b in blobs])
    x, y = load_cifar10(tmp_path / "train_jpeg.npz", "train", workers=workers)
    np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(y, y0)
    x, y = load_cifar10(tmp_path, "train", indices=[5, 0, -1])
    np.testing.assert_array_equal(x, ref[[5, 0, -1]])
    # OpenCV links its own libjpeg: equal up to IDCT rounding, identical where both use libjpeg-turbo.
    xo, _ = load_cifar10(tmp_path, "train", decoder="opencv")
    assert np.abs(xo.astype(int) - ref).max() <= 3
    with pytest.raises(ValueError, match="decoder"):
        load_cifar10(tmp_path, "train", decoder="magic")
    with pytest.raises(ValueError, match="'train' split only"):
        load_cifar10(tmp_path / "train_jpeg.npz", "test")


def test_npz_jpeg_corrupt_image(tmp_path, dataset):
    x0, y0 = dataset[1]
    p = tmp_path / "train_jpeg.npz"
    jpeg_npz(p, x0, y0)
    with np.load(p) as z:
        buf, off, y = z["jpeg"].copy(), z["offsets"], z["y"]
    buf[off[2]:off[3]] = 0
    np.savez(p, jpeg=buf, offsets=off, y=y)
    with pytest.raises(ValueError, match="image 2 in .*train_jpeg.npz"):
        load_cifar10(p, "train")
    load_cifar10(p, "train", indices=[0, 1, 3])  # the others still decode
    np.savez(p, jpeg=buf, offsets=off[:-3], y=y)
    with pytest.raises(ValueError, match="offsets"):
        load_cifar10(p, "train")


def test_npz_wrong_keys_and_shapes(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="keys"):
        load_cifar10(p)
    np.savez(p, x=np.zeros((2, 28, 28, 3), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="32, 32, 3"):
        load_cifar10(p)
    np.savez(p, x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 10]))
    with pytest.raises(ValueError, match="0..9"):
        load_cifar10(p)


# ---------------------------------------------------------------- errors

def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*accepted formats.*cifar-10-batches-py"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=str(tmp_path) + ".*test.npz"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("fmt", ["py", "bin", "npz"])
def test_truncated_files(tmp_path, dataset, fmt):
    x, y = dataset[1]
    if fmt == "py":
        p = tmp_path / "test_batch"
        write_py_batch(p, x, y)
    elif fmt == "bin":
        p = tmp_path / "test_batch.bin"
        write_bin_batch(p, x, y)
    else:
        p = tmp_path / "test.npz"
        np.savez(p, x=x, y=y)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ValueError, match=str(p)):
        load_cifar10(p)
    with pytest.raises(ValueError, match=str(p.parent)):
        load_cifar10(tmp_path)


def test_garbage_file(tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="junk"):
        load_cifar10(p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_hostile_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "test_batch"
    with open(p, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing"):
        load_cifar10(p)
    assert not (tmp_path / "pwned").exists()


def test_pickle_without_labels(tmp_path):
    p = tmp_path / "test_batch"
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match="fine_labels"):
        load_cifar10(p)


# ---------------------------------------------------------------- real data

def test_real_exact_subset(shared_data):
    p = shared_data / "cifar10" / "exact_subset.npz"
    x, y = load_cifar10(p)
    with np.load(p) as z:
        np.testing.assert_array_equal(x, z["x_test"])
        np.testing.assert_array_equal(y, z["y_test"])
    assert x.shape == (846, 32, 32, 3)


def test_real_folder_and_jpeg_training_set(shared_data):
    folder = shared_data / "cifar10"
    x, y = load_cifar10(folder, "test", limit=16)
    assert x.shape == (16, 32, 32, 3)
    with np.load(folder / "exact_subset.npz") as z:
        idx, xo, yo = z["idx_train"][::97], z["x_train"][::97], z["y_train"][::97]
    xj, yj = load_cifar10(folder / "train_jpeg.npz", "train", indices=idx)
    np.testing.assert_array_equal(yj, yo)  # same official order
    assert np.abs(xj.astype(float) - xo).mean() < 12  # JPEG copies (~5.8/255 on average)
    assert data.load_class_names(folder) == CLASS_NAMES


# ---------------------------------------------------------------- CIFAR-10-C

@pytest.fixture
def c10c(tmp_path):
    n = 8
    x = RNG.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    y = np.tile(RNG.integers(0, 10, n), 5).astype(np.uint8)
    np.save(tmp_path / "gaussian_noise.npy", x)
    np.save(tmp_path / "fog.npy", x[::-1].copy())
    np.save(tmp_path / "labels.npy", y)
    return tmp_path, x, y, n


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_cifar10c_severity_rows(c10c, severity):
    path, x, y, n = c10c
    xi, yi = load_cifar10c(path, "gaussian_noise", severity)
    sl = slice((severity - 1) * n, severity * n)
    np.testing.assert_array_equal(xi, x[sl])
    np.testing.assert_array_equal(yi, y[sl])
    assert yi.dtype == np.int64 and not isinstance(xi, np.memmap)
    xi, _ = load_cifar10c(path, "fog", severity, indices=[1, 0], limit=1)
    np.testing.assert_array_equal(xi, x[::-1][sl][[1]])


def test_cifar10c_errors(c10c):
    path, x, y, n = c10c
    assert data.available_corruptions(path) == ["fog", "gaussian_noise"]
    for sev in (0, 6, True, 2.0):
        with pytest.raises(ValueError, match="severity"):
            load_cifar10c(path, "fog", sev)
    with pytest.raises(FileNotFoundError, match="snow.npy.*fog, gaussian_noise"):
        load_cifar10c(path, "snow", 1)
    with pytest.raises(ValueError, match="corruption"):
        load_cifar10c(path, "../fog", 1)
    with pytest.raises(FileNotFoundError, match="CIFAR-10-C"):
        load_cifar10c(path / "absent", "fog", 1)
    np.save(path / "bad_count.npy", x[:-1])
    with pytest.raises(ValueError, match="5 severities"):
        load_cifar10c(path, "bad_count", 1)
    np.save(path / "bad_dtype.npy", x.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_cifar10c(path, "bad_dtype", 1)
    raw = (path / "fog.npy").read_bytes()
    (path / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.npy"):
        load_cifar10c(path, "trunc", 1)
    np.save(path / "labels.npy", y[:-5])
    with pytest.raises(ValueError, match="labels"):
        load_cifar10c(path, "fog", 1)
    os.remove(path / "labels.npy")
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_cifar10c(path, "fog", 1)


def test_cifar10c_reads_only_one_severity(c10c, monkeypatch):
    path, *_ = c10c
    calls = []
    real = np.load

    def spy(f, *a, **kw):
        calls.append(kw.get("mmap_mode"))
        return real(f, *a, **kw)

    monkeypatch.setattr(np, "load", spy)
    load_cifar10c(path, "fog", 3)
    assert calls and all(m == "r" for m in calls)


# ---------------------------------------------------------------- tensors and batches

@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 4), h=st.integers(1, 9), w=st.integers(1, 9), c=st.sampled_from([1, 3, 4]),
       seed=st.integers(0, 2**16))
def test_to_tensor_matches_formula(n, h, w, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    mean = rng.uniform(0, 1, c)
    std = rng.uniform(0.05, 1, c)
    t = to_tensor(x, mean, std)
    assert t.dtype == torch.float32 and t.shape == (n, c, h, w) and t.is_contiguous()
    ref = (x.astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(t.numpy(), ref.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_to_tensor_bad_input():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    m, s = (0.5,) * 3, (0.25,) * 3
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(x.astype(np.float32), m, s)
    with pytest.raises(TypeError, match="numpy"):
        to_tensor([[1, 2]], m, s)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        to_tensor(x[0], m, s)
    with pytest.raises(ValueError, match="mean must have 3"):
        to_tensor(x, (0.5, 0.5), s)
    with pytest.raises(ValueError, match="std must be > 0"):
        to_tensor(x, m, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="finite"):
        to_tensor(x, (0.5, float("nan"), 0.5), s)


def test_iterate_batches_matches_full_conversion():
    x, y = rand_images(23)
    m, s = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    batches = list(iterate_batches(x, y, 5, m, s))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), to_tensor(x, m, s))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(y))
    assert all(b[1].dtype == torch.int64 for b in batches)
    assert len(list(iterate_batches(x, y, 5, m, s, drop_last=True))) == 4
    sh = list(iterate_batches(x, y, 4, m, s, shuffle=True, rng=0))
    order = np.random.default_rng(0).permutation(23)
    torch.testing.assert_close(torch.cat([b[0] for b in sh]), to_tensor(x[order], m, s))
    aug = list(iterate_batches(x, y, 8, m, s, augment=lambda b, g: b[:, ::-1]))
    torch.testing.assert_close(aug[0][0], to_tensor(x[:8, ::-1], m, s))


def test_iterate_batches_bad_input():
    x, y = rand_images(4)
    with pytest.raises(ValueError, match="labels"):
        next(iterate_batches(x, y[:3], 2, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(x, y, 0, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(TypeError, match="labels"):
        next(iterate_batches(x, y.astype(float), 2, (0.5,) * 3, (0.5,) * 3))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), h=st.integers(1, 7), w=st.integers(1, 7), pad=st.integers(0, 4),
       seed=st.integers(0, 1000))
def test_random_crop_flip_outputs_are_crops(n, h, w, pad, seed):
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    out = random_crop_flip(x, np.random.default_rng(seed), pad=pad)
    assert out.shape == x.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, random_crop_flip(x, seed, pad=pad))  # seed == Generator(seed)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for i in range(n):
        cands = [c for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                 for c in (padded[i, oy:oy + h, ox:ox + w], padded[i, oy:oy + h, ox:ox + w][:, ::-1])]
        assert any(np.array_equal(out[i], c) for c in cands)


def test_random_crop_flip_statistics_and_identity():
    x, _ = rand_images(400)
    np.testing.assert_array_equal(random_crop_flip(x, 0, pad=0, flip=False), x)
    flipped = random_crop_flip(x, 0, pad=0)
    is_flip = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(flipped, x)])
    same = np.array([np.array_equal(a, b) for a, b in zip(flipped, x)])
    assert (is_flip | same).all() and 150 < is_flip.sum() < 250
    with pytest.raises(ValueError, match="pad"):
        random_crop_flip(x, 0, pad=-1)
    with pytest.raises(TypeError, match="uint8"):
        random_crop_flip(x.astype(np.float32), 0)


# ---------------------------------------------------------------- resolve_cifar10 / check_images
# expected names are the official CIFAR-10 distribution's (www.cs.toronto.edu/~kriz/cifar.html):
# python pickles data_batch_1..5 / test_batch, binary files of 1 + 3072-byte records *.bin

OFFICIAL_TRAIN = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]


@pytest.mark.parametrize("fmt", ["py", "bin"])
@pytest.mark.parametrize("where", ["parent", "folder"])
def test_resolve_cifar10_official_folders(fmt, where, py_root, bin_root):
    root = py_root if fmt == "py" else bin_root
    folder = root / f"cifar-10-batches-{fmt}"
    path = root if where == "parent" else folder
    ext = "" if fmt == "py" else ".bin"
    kind = "python" if fmt == "py" else "binary"
    assert data.resolve_cifar10(path, "test") == (kind, [folder / f"test_batch{ext}"])
    assert data.resolve_cifar10(str(path), "train") == (kind, [folder / f"{n}{ext}" for n in OFFICIAL_TRAIN])
    assert data.resolve_cifar10(path) == data.resolve_cifar10(path, "test")  # default split


def test_resolve_cifar10_single_files_and_npz(tmp_path, dataset):
    x, y = dataset[1]
    write_py_batch(tmp_path / "some_pickle", x, y)  # no extension: recognised by the pickle opcode 0x80
    write_bin_batch(tmp_path / "records", x, y)     # no extension: N * 3073 bytes
    write_bin_batch(tmp_path / "b.bin", x, y)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    assert data.resolve_cifar10(tmp_path / "some_pickle") == ("python", [tmp_path / "some_pickle"])
    assert (tmp_path / "records").stat().st_size == N_TEST * 3073
    assert data.resolve_cifar10(tmp_path / "records") == ("binary", [tmp_path / "records"])
    assert data.resolve_cifar10(tmp_path / "b.bin", "train") == ("binary", [tmp_path / "b.bin"])
    assert data.resolve_cifar10(tmp_path / "mine.npz") == ("npz", [tmp_path / "mine.npz"])
    (tmp_path / "odd").write_bytes(b"\x00" * 3074)  # not a multiple of a record, not a pickle
    with pytest.raises(ValueError, match="odd"):
        data.resolve_cifar10(tmp_path / "odd")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.resolve_cifar10(tmp_path / "empty")


def test_resolve_cifar10_npz_folders(tmp_path, dataset):
    x, y = dataset[1]
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "exact_subset.npz", x_test=x, y_test=y, x_train=x, y_train=y)
    sub = tmp_path / "cifar10" / "exact_subset.npz"
    assert data.resolve_cifar10(tmp_path, "test") == ("npz", [sub])  # found in <path>/cifar10/
    assert data.resolve_cifar10(tmp_path, "train") == ("npz", [sub])
    np.savez(tmp_path / "cifar10" / "test.npz", x=x, y=y)
    assert data.resolve_cifar10(tmp_path / "cifar10", "test") == ("npz", [tmp_path / "cifar10" / "test.npz"])
    np.savez(tmp_path / "train.npz", x=x, y=y)  # <path> itself is searched before <path>/cifar10
    assert data.resolve_cifar10(tmp_path, "train") == ("npz", [tmp_path / "train.npz"])


def test_resolve_cifar10_errors(tmp_path, dataset):
    with pytest.raises(ValueError, match="split"):
        data.resolve_cifar10(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.resolve_cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="found none"):
        data.resolve_cifar10(tmp_path)  # an empty folder
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for n in OFFICIAL_TRAIN[:3]:
        write_py_batch(d / n, *dataset[1])
    with pytest.raises(FileNotFoundError, match="data_batch_4") as e:
        data.resolve_cifar10(tmp_path, "train")
    assert "data_batch_5" in str(e.value) and "data_batch_1" not in str(e.value)


def test_check_images():
    x = np.zeros((2, 5, 4, 3), np.uint8)
    assert data.check_images(x) is x  # valid input comes back as it is
    assert data.check_images(x, channels=3) is x
    t = torch.zeros(2, 5, 4, 1, dtype=torch.uint8)
    out = data.check_images(t)
    assert isinstance(out, np.ndarray) and out.shape == (2, 5, 4, 1)
    with pytest.raises(TypeError, match="pics"):
        data.check_images([[1, 2]], "pics")
    with pytest.raises(TypeError, match="uint8"):
        data.check_images(x.astype(np.float32))
    for bad in (np.zeros((5, 4, 3), np.uint8), np.zeros((1, 2, 5, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
            data.check_images(bad)
    with pytest.raises(ValueError, match="4 channels"):
        data.check_images(x, channels=4)
    with pytest.raises(ValueError, match="channels"):
        data.check_images(np.zeros((2, 3, 5, 4), np.uint8), channels=3)  # NCHW, not NHWC
