"""One torch.fx matching vocabulary for prunecal's graph passes: the plan compiler
(:mod:`prunecal.sparse.plan`), BatchNorm folding and ReLU fusion (:mod:`prunecal.sparse.fold`)
and structured pruning's channel tracing (:mod:`prunecal.prune.structured`) ask here which
calls are a ReLU or an add, so the three never disagree on what a ReLU is.

A *call* is an fx node of op ``call_function`` or ``call_method``; modules (``nn.ReLU``) are
matched by the passes themselves (they also check hooks).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

__all__ = ["RELU_FUNCTIONS", "RELU_METHODS", "ADD_FUNCTIONS", "ADD_METHODS", "is_relu_call", "relu_call_inplace",
           "is_add_call", "add_call_inplace"]

RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
RELU_METHODS = ("relu", "relu_")
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add", "add_")
_INPLACE_RELU_FUNCTIONS = (torch.relu_, F.relu_)


def is_relu_call(node: fx.Node) -> bool:
    """``F.relu(x)`` / ``torch.relu(x)`` / ``relu_`` forms (keyword ``inplace`` only) or
    ``x.relu()`` / ``x.relu_()`` (no other argument)."""
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    if node.op == "call_method":
        return node.target in RELU_METHODS and len(node.args) == 1 and not node.kwargs
    return False


def relu_call_inplace(node: fx.Node) -> bool:
    """Whether a ReLU call (see :func:`is_relu_call`) overwrites its input."""
    if node.op == "call_method":
        return node.target == "relu_"
    return node.target in _INPLACE_RELU_FUNCTIONS or bool(node.kwargs.get("inplace", False))


def is_add_call(node: fx.Node) -> bool:
    """``a + b`` / ``a += b`` / ``torch.add(a, b)`` or ``a.add(b)`` / ``a.add_(b)``: two operands,
    no keyword (``alpha`` scales, so it is not a plain add)."""
    if node.op == "call_function":
        return node.target in ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs
    if node.op == "call_method":
        return node.target in ADD_METHODS and len(node.args) == 2 and not node.kwargs
    return False


def add_call_inplace(node: fx.Node) -> bool:
    """Whether an add call (see :func:`is_add_call`) overwrites its first operand."""
    return node.target is operator.iadd or node.target == "add_"
