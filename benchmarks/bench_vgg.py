"""The paper's VGGs through the native plan: wide, small-map layers at batch 64 (issue: lanes section).

Networks pruned to 90 % by global magnitude (every conv but the stem; classifier dense):
VGG-16-BN, VGG-19-BN and the paper's VGG-16 (``vgg16_bn_l1``) with their default initialisation and randomised BN statistics, or
trained weights from ``PRUNECAL_VGG_WEIGHTS`` (a folder of ``<name>.pt`` state dicts, e.g. from
``scripts/train_vgg_brief.py``); ResNet-56 (pretrained where the checkpoint exists) and
MobileNetV2 beside them to show the other shapes do not regress. Runners:

- ``eager``: the pruned model in torch eager mode (dense arithmetic; the baseline),
- ``plan``: :func:`prunecal.sparse.sparsify` (the compiled plan; its lanes section on),
- ``plan-nolanes``: the same plan with ``PRUNECAL_PLAN_LANES=0`` (every layer image by image),
- ``layers``: ``sparsify(..., plan=False)``, one native call per layer (what ``vgg16_bn_l1``, the
  paper's VGG-16 with its ``Linear-BatchNorm1d`` classifier, ran as before the plan folded it).

Per layer: three 3x3 convs at 90 % on VGG's shapes (64x32x32 ... 512x2x2), batch 64, one thread,
lanes on and off. The ISA path is the process's (``PRUNECAL_ISA=avx2`` forces the AVX2 path on
an AVX-512 machine). Run and tabulate (one run)::

    python -m pytest benchmarks/bench_vgg.py --benchmark-only -q --benchmark-json=bench_vgg.json
    python benchmarks/bench_vgg.py bench_vgg.json      # markdown tables: images/s and ratios

``PRUNECAL_BENCH_SECONDS`` (default 1.0) is the target measuring time per case.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, peers
import peers  # noqa: E402
from harness import bench_forward  # noqa: E402

NETS = ("vgg16_bn", "vgg19_bn", "vgg16_bn_l1", "resnet56", "mobilenetv2")
RUNNERS = ("eager", "plan", "plan-nolanes")
NET_RUNNERS = RUNNERS + ("layers",)
CONFIGS = ((1, 1), (64, 2))  # (batch, threads)
LAYERS = ((64, 32), (128, 16), (256, 8), (512, 4), (512, 2))  # (channels, map side)
SPARSITY = 0.9
TARGET_S = float(os.environ.get("PRUNECAL_BENCH_SECONDS", "1.0"))


def weights_kind(name: str) -> str:
    folder = os.environ.get("PRUNECAL_VGG_WEIGHTS")
    if name.startswith("vgg") and folder and (Path(folder) / f"{name}.pt").is_file():
        return "trained"
    return "pretrained" if peers.weights_path(name) else "init"


@functools.lru_cache(maxsize=None)
def pruned(name: str) -> nn.Module:
    """``peers.pruned_model(name, SPARSITY)``, or with the trained weights of
    ``PRUNECAL_VGG_WEIGHTS`` loaded before pruning."""
    if weights_kind(name) != "trained":
        return peers.pruned_model(name, SPARSITY)
    model = peers.build_model(name)[0]
    state = torch.load(Path(os.environ["PRUNECAL_VGG_WEIGHTS"]) / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return peers.prune_convs(model.eval(), SPARSITY).eval()


@functools.lru_cache(maxsize=8)
def prepared(name: str, runner: str, threads: int) -> nn.Module:
    model = pruned(name)
    if runner == "eager":
        return model
    from prunecal.sparse import sparsify

    return sparsify(model, "csr", threads=threads, plan=runner != "layers")


def lanes_setting(monkeypatch, runner: str) -> None:
    if runner == "plan-nolanes":
        monkeypatch.setenv("PRUNECAL_PLAN_LANES", "0")
    else:
        monkeypatch.delenv("PRUNECAL_PLAN_LANES", raising=False)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"b{c[0]}-t{c[1]}")
@pytest.mark.parametrize("runner", NET_RUNNERS)
@pytest.mark.parametrize("net", NETS)
def test_network(benchmark, monkeypatch, net, runner, config):
    batch, threads = config
    if runner != "eager":
        pytest.importorskip("prunecal._C")
    lanes_setting(monkeypatch, runner)
    model = prepared(net, runner, threads)
    x = peers.sample_input(batch)
    bench_forward(benchmark, model, x, threads, target_s=TARGET_S, warmups=2, min_rounds=3, max_rounds=500,
                  warmup_rounds=0, net=net, runner=runner, batch=batch, weights=weights_kind(net),
                  isa=os.environ.get("PRUNECAL_ISA", "auto"))


@functools.lru_cache(maxsize=None)
def layer_chain(channels: int, side: int, runner: str) -> nn.Module:
    torch.manual_seed(channels + side)
    convs = []
    for _ in range(3):
        c = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():  # 90 % by magnitude within the layer
            k = int(c.weight.numel() * SPARSITY)
            thr = c.weight.abs().flatten().kthvalue(k).values
            c.weight.mul_((c.weight.abs() > thr).float())
        convs += [c, nn.ReLU()]
    model = nn.Sequential(*convs).eval()
    if runner == "eager":
        return model
    from prunecal.sparse.plan import compile_plan

    return compile_plan(model, "csr", threads=1, input_size=(channels, side, side))


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("shape", LAYERS, ids=lambda s: f"{s[0]}x{s[1]}x{s[1]}")
def test_layer(benchmark, monkeypatch, shape, runner):
    channels, side = shape
    if runner != "eager":
        pytest.importorskip("prunecal._C")
    lanes_setting(monkeypatch, runner)
    model = layer_chain(channels, side, runner)
    x = torch.randn(64, channels, side, side, generator=torch.Generator().manual_seed(0))
    bench_forward(benchmark, model, x, 1, target_s=TARGET_S, warmups=2, min_rounds=3, max_rounds=500,
                  warmup_rounds=0, layer=f"{channels}x{side}x{side}", runner=runner, batch=64,
                  isa=os.environ.get("PRUNECAL_ISA", "auto"))


# ---- tables ------------------------------------------------------------------------------
def tables(json_path: str) -> str:
    data = json.loads(Path(json_path).read_text())
    nets: dict[tuple, dict[str, float]] = {}
    layers: dict[str, dict[str, float]] = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        rate = e["batch"] / b["stats"]["median"]
        if "net" in e:
            nets.setdefault((e["net"], e["weights"], e["batch"], e["threads"]), {})[e["runner"]] = rate
        else:
            layers.setdefault(e["layer"], {})[e["runner"]] = rate
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    isa = {b["extra_info"].get("isa", "auto") for b in data["benchmarks"]}
    out = [f"CPU: {cpu}; PRUNECAL_ISA: {', '.join(sorted(isa))}", "",
           "| network @90 % | weights | batch / threads | torch eager | per-layer modules | plan (lanes) "
           "| plan (no lanes) | plan / eager | lanes gain |", "|---|---|---|---|---|---|---|---|---|"]
    for (net, w, batch, threads), r in sorted(nets.items()):
        e, p, n, lay = r.get("eager"), r.get("plan"), r.get("plan-nolanes"), r.get("layers")
        ratio = f"{p / e:.2f}x" if e and p else "-"
        gain = f"{p / n:.2f}x" if n and p else "-"
        out.append(f"| {net} | {w} | b{batch} / {threads} | {e or 0:.0f} | {lay or 0:.0f} | {p or 0:.0f} | {n or 0:.0f} "
                   f"| {ratio} | {gain} |")
    if layers:
        out += ["", "| layer (3 convs @90 %, batch 64, 1 thread) | torch eager | plan (lanes) | plan (no lanes) "
                "| lanes gain |", "|---|---|---|---|---|"]
    for layer, r in layers.items():
        e, p, n = r.get("eager"), r.get("plan"), r.get("plan-nolanes")
        gain = f"{p / n:.2f}x" if n and p else "-"
        out.append(f"| {layer} | {e or 0:.0f} | {p or 0:.0f} | {n or 0:.0f} | {gain} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/bench_vgg.py BENCH_JSON")
    print(tables(sys.argv[1]))
