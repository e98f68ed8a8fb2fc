"""The shared torch.fx vocabulary (prunecal.fx_match): which traced calls are a ReLU or an add,
and which of them are in place. Expected values: the call forms written out by hand."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunecal.fx_match import add_call_inplace, is_add_call, is_relu_call, relu_call_inplace


class Calls(nn.Module):
    def forward(self, x, y):
        a = F.relu(x)
        b = torch.relu(x)
        c = F.relu(x, inplace=True)
        d = torch.relu_(x)
        e = x.relu()
        f = x.relu_()
        g = x + y
        h = torch.add(x, y)
        i = x.add(y)
        j = x.add_(y)
        k = torch.add(x, y, alpha=2)  # scaled: not a plain add
        m = F.leaky_relu(x)
        n = x * y
        return a, b, c, d, e, f, g, h, i, j, k, m, n


def nodes() -> dict[str, fx.Node]:
    g = fx.symbolic_trace(Calls()).graph
    return {n.name: n for n in g.nodes if n.op in ("call_function", "call_method")}


def test_relu_calls_and_their_in_place_forms():
    ns = nodes()
    relus = {name for name, n in ns.items() if is_relu_call(n)}
    assert relus == {"relu", "relu_1", "relu_2", "relu_", "relu_3", "relu__1"}
    inplace = {name for name in relus if relu_call_inplace(ns[name])}
    assert inplace == {"relu_2", "relu_", "relu__1"}  # inplace=True, torch.relu_, x.relu_()


def test_add_calls_and_their_in_place_forms():
    ns = nodes()
    adds = {name for name, n in ns.items() if is_add_call(n)}
    assert adds == {"add", "add_1", "add_2", "add_"}  # x + y, torch.add, x.add, x.add_; not alpha=2
    assert {name for name in adds if add_call_inplace(ns[name])} == {"add_"}


def test_iadd_is_an_in_place_add():
    g = fx.Graph()
    x, y = g.placeholder("x"), g.placeholder("y")
    n = g.call_function(operator.iadd, (x, y))
    assert is_add_call(n) and add_call_inplace(n)
    assert not is_relu_call(g.placeholder("z"))
