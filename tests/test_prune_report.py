"""Sparsity / FLOPs report: MACs against the convolution formula, densities, output."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunecal.prune import prune, sparsity_report, weight_sparsity


def _out(size, k, stride, pad, dil=1):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


@settings(max_examples=20, deadline=None)
@given(cin=st.integers(1, 4), mult=st.integers(1, 3), k=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2),
       h=st.integers(6, 12), w=st.integers(6, 12), depthwise=st.booleans())
def test_conv_macs_formula(cin, mult, k, stride, pad, dil, h, w, depthwise):
    groups = cin if depthwise else 1
    cout = cin * mult
    net = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dil, groups=groups),
                        nn.Flatten(), nn.LazyLinear(3))
    ho, wo = _out(h, k, stride, pad, dil), _out(w, k, stride, pad, dil)
    assume(ho >= 1 and wo >= 1)
    net(torch.zeros(1, cin, h, w))  # materialise the lazy layer
    rep = sparsity_report(net, (cin, h, w))
    conv, lin = rep.layers
    assert conv.macs == cout * ho * wo * (cin // groups) * k * k
    assert lin.macs == 3 * cout * ho * wo
    assert rep.dense_macs == conv.macs + lin.macs
    assert conv.params == cout * (cin // groups) * k * k and conv.density == 1.0


def test_resnet20_reference_macs():
    from prunecal import models  # part of the package: never skipped
    rep = sparsity_report(models.create("resnet20"))
    # the widely quoted 40.55 M multiply-accumulates (convs) + 640 for the classifier
    assert rep.dense_macs == 40_551_040
    assert rep.prunable_params == 267_696 + 640  # conv weights + classifier weight
    assert rep.total_params == sum(p.numel() for p in models.create("resnet20").parameters())


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_density_and_effective_macs_after_pruning():
    net = Net()
    out = prune(net, "layer_magnitude", 0.75)
    rep = sparsity_report(out, (3, 10, 10))
    conv, fc = rep.layers
    assert conv.nonzero == conv.params - round(0.75 * conv.params)
    assert conv.effective_macs == pytest.approx(conv.macs * conv.density)
    assert rep.effective_macs == pytest.approx(conv.effective_macs + fc.effective_macs)
    zeros = sum(l.params - l.nonzero for l in rep.layers)
    assert rep.sparsity == pytest.approx(zeros / rep.prunable_params)
    d = rep.to_dict()
    json.dumps(d)
    assert d["layers"][0]["name"] == "conv" and d["prune_info"]["method"] == "layer_magnitude"
    text = str(rep)
    assert "conv" in text and "fc" in text and "total" in text and "MMACs" in text
    assert out.training == net.training


def test_reads_torch_pruning_and_restores_mode():
    net = Net().train()
    torch_prune.l1_unstructured(net.conv, "weight", amount=0.5)
    rep = sparsity_report(net)
    assert rep.layers[0].nonzero == rep.layers[0].params // 2
    assert net.training
    total = sum(p.numel() for n, p in net.named_parameters())  # weight_orig counted once
    assert rep.total_params == total


def test_weight_sparsity_without_a_forward_pass():
    net = prune(Net(), "layer_magnitude", 0.75)
    ws = [net.conv.weight, net.fc.weight]
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert weight_sparsity(net) == pytest.approx(zeros / sum(w.numel() for w in ws))
    assert weight_sparsity(net) == pytest.approx(sparsity_report(net, (3, 10, 10)).sparsity)
    assert weight_sparsity(nn.ReLU()) == 0.0
    # torch pruning: orig * mask, not the `weight` attribute (stale until the next forward)
    tp = Net()
    torch_prune.l1_unstructured(tp.conv, "weight", amount=0.5)
    with torch.no_grad():
        tp.conv.weight_orig.zero_()
    n_conv, n_fc = tp.conv.weight_orig.numel(), tp.fc.weight.numel()
    assert weight_sparsity(tp) == pytest.approx(n_conv / (n_conv + n_fc))
    with pytest.raises(TypeError, match="model"):
        weight_sparsity("net")


def test_bad_input():
    with pytest.raises(TypeError, match="model"):
        sparsity_report("net")
    with pytest.raises(ValueError, match="input_size"):
        sparsity_report(Net(), (3, 0, 4))
    with pytest.raises(TypeError, match="input_size"):
        sparsity_report(Net(), "abc")
    with pytest.raises(ValueError, match="forward pass"):
        sparsity_report(Net(), (5, 8, 8))  # wrong channel count
