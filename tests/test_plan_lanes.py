"""The plan's lanes section (csrc/plan_lanes.h): late small-map layers run on blocks of 16 images.

References: the same plan image by image (``PRUNECAL_PLAN_LANES=0``), which must give the same
bits (same FMAs in the same order), and torch's own forward (float tolerance). Random VGG-like
networks with maps down to 1x1, channel counts that are not multiples of the vector width,
stride-2 and pad-0 convs and max-pools inside the section; batches that leave partial blocks;
1 and 2 threads; input-channel bands forced small; NaN and overflowing images inside a block.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

pytest.importorskip("prunecal._C")
from prunecal.models import VGGCifar  # noqa: E402
from prunecal.prune import prune  # noqa: E402
from prunecal.sparse.plan import compile_plan  # noqa: E402


def randomise_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1)
    return model.eval()


def pruned_vgg(config, seed: int, sparsity: float = 0.85) -> nn.Module:
    torch.manual_seed(seed)
    m = randomise_bn(VGGCifar(config), torch.Generator().manual_seed(seed))
    return prune(m, "global_magnitude", sparsity, keep_first_conv=True, keep_classifier=True).eval()


class SmallTail(nn.Module):
    """A stem to an 8x8 map (input 32x32), then a tail the lanes section must handle: a stride-2
    conv reading a border-less buffer (8x8 -> 4x4), a pad-0 conv (4x4 -> 2x2), a max-pool with
    padding, ReLU after a conv with bias, global pool, linear."""

    def __init__(self, c: int = 11) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(2))
        self.a = nn.Conv2d(c, 21, 3, stride=2, padding=1)
        self.b = nn.Conv2d(21, 19, 3)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.c = nn.Conv2d(19, 17, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(17, 7)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.a(x))
        x = self.pool(torch.relu(self.b(x)))
        x = torch.relu(self.c(x))
        return self.fc(self.gap(x).flatten(1))


def run(plan, x: torch.Tensor, monkeypatch, lanes: int, band_kb: int | None = None) -> torch.Tensor:
    monkeypatch.setenv("PRUNECAL_PLAN_LANES", str(lanes))
    if band_kb is None:
        monkeypatch.delenv("PRUNECAL_PLAN_LANE_BAND_KB", raising=False)
    else:
        monkeypatch.setenv("PRUNECAL_PLAN_LANE_BAND_KB", str(band_kb))
    with torch.no_grad():
        return plan(x)


def lanes_ops(plan) -> list[str]:
    return [line for line in plan.describe().splitlines() if "[lanes x16]" in line]


def test_vgg16_late_layers_are_in_the_section_and_resnet_has_none(monkeypatch):
    from prunecal import models

    monkeypatch.delenv("PRUNECAL_PLAN_LANES", raising=False)
    vgg = compile_plan(models.create("vgg16_bn", width_mult=0.125).eval(), "csr")
    ops = lanes_ops(vgg)
    # VGG-16: three 4x4 convs, 2x2 pool, three 2x2 convs, 1x1 pool; the 8x8 -> 4x4 pool before
    # them runs per image (the entry copy then moves a quarter of the floats)
    assert len(ops) == 8 and sum("conv" in op for op in ops) == 6
    assert ops[0].split()[0] == "conv" and "maxpool" not in ops[0]
    assert all("x4x4" in op.split("->")[1] or "x2x2" in op.split("->")[1] or "x1x1" in op.split("->")[1]
               for op in ops)
    resnet = compile_plan(models.create("resnet20").eval(), "csr")
    assert lanes_ops(resnet) == []
    monkeypatch.setenv("PRUNECAL_PLAN_LANES", "0")
    assert lanes_ops(vgg) == []


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [4, 16, 21, 40])
def test_vgg_blocks_give_the_bits_of_image_by_image(monkeypatch, threads, batch):
    model = pruned_vgg([8, "M", 12, "M", 20, "M", 33, 17, "M", 24, 24], seed=batch + threads)
    plan = compile_plan(model, "csr", threads=threads)
    assert lanes_ops(plan)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    ref = run(plan, x, monkeypatch, 0)
    got = run(plan, x, monkeypatch, 16)
    assert torch.equal(got, ref)
    torch.testing.assert_close(got, model(x).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("band_kb", [1, 3, 1024])
def test_input_channel_bands_keep_the_bits(monkeypatch, band_kb):
    # 1 KiB: one channel (a 2x2 map with P = 1: 16 positions x 16 lanes) per band, so partial
    # sums pass through the output many times; bias and ReLU only after the last band
    model = pruned_vgg([16, "M", 24, "M", 40, "M", 64, 64, "M", 48, 37], seed=7, sparsity=0.7)
    plan = compile_plan(model, "csr", threads=1)
    x = torch.randn(18, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ref = run(plan, x, monkeypatch, 0)
    assert torch.equal(run(plan, x, monkeypatch, 16, band_kb), ref)


def test_stride_two_pad_zero_and_padded_pool_inside_the_section(monkeypatch):
    torch.manual_seed(0)
    model = SmallTail().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_((torch.rand_like(m.weight) > 0.5).float())
    plan = compile_plan(model, "csr", threads=1)
    ops = lanes_ops(plan)
    assert any(" s2 " in op for op in ops) and any("maxpool" in op and "p1" in op for op in ops)
    assert any("3x3 s1 p0" in op for op in ops) and len(ops) == 4
    # 24x24 input: 6x6 -> 3x3 -> 1x1 maps in the section
    plan24 = compile_plan(model, "csr", threads=1, input_size=(3, 24, 24))
    assert len(lanes_ops(plan24)) == 4
    for p, xx in ((plan, torch.randn(23, 3, 32, 32)), (plan24, torch.randn(23, 3, 24, 24))):
        ref = run(p, xx, monkeypatch, 0)
        got = run(p, xx, monkeypatch, 16)
        assert torch.equal(got, ref)
        torch.testing.assert_close(got, model(xx).detach(), rtol=1e-4, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(
    widths=st.lists(st.integers(1, 40), min_size=4, max_size=4),
    side=st.sampled_from([8, 16, 32]),
    batch=st.integers(1, 37),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 10_000),
)
def test_random_vgg_shapes(widths, side, batch, threads, seed):
    # maps of side / 2, / 4, / 8 (down to 1x1 for side 8), any channel count
    a, b, c, d = widths
    config = [a, "M", b, "M", c, d, "M", d]
    model = pruned_vgg(config, seed=seed, sparsity=0.6)
    plan = compile_plan(model, "csr", threads=threads, input_size=(3, side, side))
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))
    with pytest.MonkeyPatch.context() as mp:
        ref = run(plan, x, mp, 0)
        got = run(plan, x, mp, 64)
    assert torch.equal(got, ref)
    torch.testing.assert_close(got, model(x).detach(), rtol=1e-4, atol=1e-4)


def test_non_finite_images_inside_a_block(monkeypatch):
    model = pruned_vgg([8, "M", 12, "M", 20, "M", 24, 24], seed=1)
    plan = compile_plan(model, "csr", threads=1)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[3, 1, 4, 5] = float("nan")
    x[9] *= 1e37  # overflows to inf / NaN inside the network: that image re-runs densely
    ref = run(plan, x, monkeypatch, 0)
    got = run(plan, x, monkeypatch, 16)
    torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(got[3]).all()
    finite = [i for i in range(16) if i not in (3, 9)]
    assert torch.equal(got[finite], ref[finite])
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4)
    assert torch.isnan(want[3]).all()


def test_lanes_setting_is_checked(monkeypatch):
    model = pruned_vgg([8, "M", 12, "M", 20, "M", 24], seed=0)
    plan = compile_plan(model, "csr", threads=1)
    x = torch.randn(8, 3, 32, 32)
    for bad in ("abc", "-1", "16px"):
        monkeypatch.setenv("PRUNECAL_PLAN_LANES", bad)
        with pytest.raises(ValueError, match="PRUNECAL_PLAN_LANES"):
            with torch.no_grad():
                plan(x)


def test_lane_bytes_count_every_section_buffer(monkeypatch):
    import re

    monkeypatch.delenv("PRUNECAL_PLAN_LANES", raising=False)
    model = pruned_vgg([8, "M", 12, "M", 20, "M", 33, 17, "M", 24, 24], seed=0)
    plan = compile_plan(model, "csr", threads=1)
    native = plan.plan_for((3, 32, 32))
    # independent count from the described ops: each buffer a section op reads or writes, its
    # C x (H + 2P) x (W + 2P) positions of 16 floats (P: its border, at least 1 where a 3x3 pad-1
    # conv reads it), plus 64 floats of slack, rounded up to 16 floats
    bufs: dict[str, tuple[int, int, int, int]] = {}
    for line in lanes_ops(plan):
        specs = re.findall(r"(b\d+)\((\d+)x(\d+)x(\d+)(?:,P(\d+))?", line)
        for i, (name, c, h, w, p) in enumerate(specs):
            pad = int(p or 0)
            if line.lstrip().startswith("conv") and i == 0:
                pad = max(pad, 1)
            old = bufs.get(name, (0, 0, 0, 0))
            bufs[name] = (int(c), int(h), int(w), max(pad, old[3]))
    floats = sum((c * (h + 2 * p) * (w + 2 * p) * 16 + 64 + 15) // 16 * 16 for c, h, w, p in bufs.values())
    assert native.lane_bytes == floats * 4 > 0
    assert "KiB lanes buffers" in plan.describe()
    monkeypatch.setenv("PRUNECAL_PLAN_LANES", "0")
    assert native.lane_bytes == 0 and "lanes buffers" not in plan.describe()
