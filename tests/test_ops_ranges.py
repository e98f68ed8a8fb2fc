"""Issue 16: parameters beyond the native core's C int range give one line from Python (naming
the parameter), not pybind11's multi-line "incompatible function arguments"."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("native")  # a missing _C fails (conftest.require_native)

from prunecal.sparse.formats import CSRWeight  # noqa: E402
from prunecal.sparse.ops import sparse_conv2d, sparse_linear  # noqa: E402

BIG = [2**31, 2**40, 2**63]


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    return torch.randn(1, 4, 8, 8), CSRWeight.from_dense(torch.randn(4, 4, 3, 3))


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "incompatible function arguments" not in msg, msg
    return msg


@pytest.mark.parametrize("name", ["stride", "padding", "dilation", "groups", "threads"])
@pytest.mark.parametrize("value", BIG)
def test_conv_params_beyond_int_range(conv, name, value):
    x, w = conv
    with pytest.raises(ValueError) as ei:
        sparse_conv2d(x, w, **{name: value})
    msg = one_line(ei.value)
    assert msg.startswith(f"{name}:") and str(value) in msg


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
def test_conv_square_pair_beyond_int_range(conv, name):
    x, w = conv
    with pytest.raises(ValueError, match=f"^{name}: 2147483648 is out of range"):
        sparse_conv2d(x, w, **{name: (2**31, 2**31)})


@pytest.mark.parametrize("name,value", [("stride", -2**31 - 1), ("padding", -2**40), ("dilation", -2**63)])
def test_conv_params_far_below_range(conv, name, value):
    x, w = conv
    with pytest.raises(ValueError) as ei:
        sparse_conv2d(x, w, **{name: value})
    assert one_line(ei.value).startswith(name)


@pytest.mark.parametrize("value", BIG)
def test_linear_threads_beyond_int_range(value):
    w = CSRWeight.from_dense(torch.randn(3, 5))
    with pytest.raises(ValueError) as ei:
        sparse_linear(torch.randn(2, 5), w, threads=value)
    assert one_line(ei.value).startswith("threads:")


def test_values_at_the_edge_still_work(conv):
    x, w = conv
    ref = torch.nn.functional.conv2d(x, torch.as_tensor(w.to_dense()), stride=1, padding=1)
    torch.testing.assert_close(sparse_conv2d(x, w, padding=1, threads=1), ref, rtol=1e-5, atol=1e-5)
    # a large but representable stride reaches the kernel's own geometry check (one line too)
    with pytest.raises(ValueError) as ei:
        sparse_conv2d(x, w, stride=2**31 - 1)
    one_line(ei.value)
