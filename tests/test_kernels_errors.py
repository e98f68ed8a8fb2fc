"""Bad input to the sparse kernels: a clear TypeError / ValueError, never a crash."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prunecal._native import cpu_features, default_threads, load_native
from prunecal.sparse.formats import BSRWeight, CSRWeight
from prunecal.sparse.ops import sparse_conv2d, sparse_linear

_C = load_native()


@pytest.fixture
def conv_w():
    w = torch.randn(6, 4, 3, 3)
    w[w.abs() < 0.7] = 0
    return CSRWeight.from_dense(w)


@pytest.fixture
def lin_w():
    return CSRWeight.from_dense(torch.randn(5, 8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int32, torch.int64, torch.bool])
def test_conv_wrong_dtype(conv_w, dtype):
    x = torch.zeros(1, 4, 5, 5, dtype=dtype)
    with pytest.raises(TypeError, match="x: expected dtype torch.float32"):
        sparse_conv2d(x, conv_w)


@pytest.mark.parametrize("shape", [(4, 5), (1, 1, 4, 5, 5), (20,)])
def test_conv_wrong_rank(conv_w, shape):
    with pytest.raises(ValueError, match="x: expected a 4-D"):
        sparse_conv2d(torch.zeros(shape), conv_w)


def test_conv_channel_mismatch(conv_w):
    with pytest.raises(ValueError, match="input channels"):
        sparse_conv2d(torch.zeros(1, 5, 6, 6), conv_w)
    with pytest.raises(ValueError, match="input channels"):
        sparse_conv2d(torch.zeros(1, 4, 6, 6), conv_w, groups=2)


@pytest.mark.parametrize("kw,match", [
    (dict(stride=0), "stride"), (dict(padding=-1), "padding"), (dict(dilation=0), "dilation"),
    (dict(groups=0), "groups"), (dict(groups=4), "groups"), (dict(stride=(1, 2)), "square"),
])
def test_conv_bad_params(conv_w, kw, match):
    with pytest.raises(ValueError, match=match):
        sparse_conv2d(torch.zeros(1, 4, 6, 6), conv_w, **kw)


def test_conv_param_types(conv_w):
    with pytest.raises(TypeError, match="stride"):
        sparse_conv2d(torch.zeros(1, 4, 6, 6), conv_w, stride=1.5)
    with pytest.raises(TypeError, match="groups"):
        sparse_conv2d(torch.zeros(1, 4, 6, 6), conv_w, groups="1")
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        sparse_conv2d(np.zeros((1, 4, 6, 6), np.float32), conv_w)
    with pytest.raises(TypeError, match="weight"):
        sparse_conv2d(torch.zeros(1, 4, 6, 6), torch.zeros(6, 4, 3, 3))


def test_conv_input_smaller_than_kernel(conv_w):
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        sparse_conv2d(torch.zeros(1, 4, 2, 2), conv_w)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        sparse_conv2d(torch.zeros(1, 4, 4, 4), conv_w, dilation=2)


def test_conv_bad_bias(conv_w):
    x = torch.zeros(1, 4, 6, 6)
    with pytest.raises(ValueError, match="bias"):
        sparse_conv2d(x, conv_w, torch.zeros(5))
    with pytest.raises(TypeError, match="bias"):
        sparse_conv2d(x, conv_w, torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias"):
        sparse_conv2d(torch.zeros(0, 4, 6, 6), conv_w, torch.zeros(5))


def test_conv_gets_linear_weight_and_vice_versa(conv_w, lin_w):
    with pytest.raises(ValueError, match="conv weight"):
        sparse_conv2d(torch.zeros(1, 8, 4, 4), lin_w)
    with pytest.raises(ValueError, match="linear weight"):
        sparse_linear(torch.zeros(2, 36), conv_w)


def test_linear_errors(lin_w):
    with pytest.raises(TypeError, match="x: expected dtype"):
        sparse_linear(torch.zeros(2, 8, dtype=torch.float64), lin_w)
    with pytest.raises(ValueError, match="input features"):
        sparse_linear(torch.zeros(2, 9), lin_w)
    with pytest.raises(ValueError, match="scalar"):
        sparse_linear(torch.tensor(1.0), lin_w)
    with pytest.raises(ValueError, match="bias"):
        sparse_linear(torch.zeros(2, 8), lin_w, torch.zeros(4))


def test_threads_argument(conv_w):
    x = torch.zeros(1, 4, 6, 6)
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="threads"):
            sparse_conv2d(x, conv_w, threads=bad)
    assert default_threads(None) == torch.get_num_threads()


def test_unknown_isa(conv_w):
    with pytest.raises(ValueError, match="isa"):
        sparse_conv2d(torch.zeros(1, 4, 6, 6), conv_w, isa="sse9")


def test_isa_of_another_architecture(conv_w):
    # every build knows every name; asking for one this machine lacks is a ValueError, not a crash
    other = "avx2" if cpu_features()["neon_compiled"] else "neon"
    with pytest.raises(ValueError, match="isa: '" + other + "' is not supported"):
        sparse_conv2d(torch.zeros(1, 4, 6, 6), conv_w, isa=other)


def test_requires_grad_input_is_fine(conv_w):
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    y = sparse_conv2d(x, conv_w)
    assert not y.requires_grad and y.shape == (1, 6, 4, 4)


# ---- the C++ boundary itself ---------------------------------------------------------------

def _pw():
    return _C.PackedWeight("csr", np.ones(2, np.float32), np.array([0, 1, 2], np.int32),
                           np.array([0, 1], np.int32), [2, 1, 1, 2], 1)


@pytest.mark.parametrize("args,exc", [
    (("csr", np.ones(2, np.float64), np.array([0, 1, 2], np.int32), np.array([0, 1], np.int32)), TypeError),
    (("csr", np.ones(2, np.float32), np.array([0, 1, 2], np.int64), np.array([0, 1], np.int32)), TypeError),
    (("csr", np.ones(2, np.float32), np.array([0, 2, 1], np.int32), np.array([0, 1], np.int32)), ValueError),
    (("csr", np.ones(2, np.float32), np.array([0, 1, 2], np.int32), np.array([0, 9], np.int32)), ValueError),
    (("csr", np.ones(2, np.float32), np.array([0, 1, 5], np.int32), np.array([0, 1], np.int32)), ValueError),
    (("csr", np.ones(3, np.float32), np.array([0, 1, 2], np.int32), np.array([0, 1], np.int32)), ValueError),
    (("coo", np.ones(2, np.float32), np.array([0, 1, 2], np.int32), np.array([0, 1], np.int32)), ValueError),
    (("bsr", np.ones(2, np.float32), np.array([0, 1], np.int32), np.array([0, 1], np.int32)), ValueError),
])
def test_native_packed_weight_validation(args, exc):
    with pytest.raises(exc):
        _C.PackedWeight(*args, [2, 1, 1, 2], 4 if args[0] == "bsr" else 1)


def test_native_conv_checks():
    w = _pw()
    x = np.zeros((1, 1, 3, 3), np.float32)
    out = np.zeros((1, 2, 3, 2), np.float32)
    w.conv2d(x, out)
    with pytest.raises(ValueError, match="out"):
        w.conv2d(x, np.zeros((1, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="out"):
        w.conv2d(x, np.zeros((1, 2, 3, 2), np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        w.conv2d(np.zeros((1, 1, 3, 6), np.float32)[..., ::2], out)
    ro = np.zeros((1, 2, 3, 2), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        w.conv2d(x, ro)
    buf = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        w.conv2d(buf[:9].reshape(1, 1, 3, 3), buf[5:17].reshape(1, 2, 3, 2))
    with pytest.raises(ValueError, match="linear"):
        _C.PackedWeight("csr", np.ones(1, np.float32), np.array([0, 1], np.int32), np.array([0], np.int32),
                        [1, 1, 3, 3], 1).linear(np.zeros((1, 9), np.float32), np.zeros((1, 1), np.float32))


def test_corrupt_weight_file_never_reaches_kernel(tmp_path):
    p = tmp_path / "w.npz"
    np.savez(p, kind=np.array("bsr"), version=np.int64(1), shape=np.array([4, 3]),
             values=np.ones((1, 4), np.float32), indptr=np.array([0, 1], np.int32),
             indices=np.array([1000], np.int32), block_rows=np.int64(4))
    from prunecal.sparse.formats import load_weight

    with pytest.raises(ValueError, match="w.npz"):
        load_weight(p)
    assert BSRWeight.from_dense(np.eye(4, 3, dtype=np.float32)).nnz == 3
