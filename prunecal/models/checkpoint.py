"""Reading and writing model checkpoints with clear errors.

Accepted layouts: a raw state dict, ``{'state_dict': sd, ...}`` (e.g. the pretrained
CIFAR ResNets, with ``best_prec1``), ``{'model': sd, ...}``; keys may carry
``module.`` (DataParallel) or ``_orig_mod.`` (``torch.compile``) prefixes. Files are
read with ``torch.load(weights_only=True)``: no arbitrary code runs on load.
"""
from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunecal._atomic import atomic_write

__all__ = ["load_checkpoint", "save_checkpoint", "read_state_dict", "file_sha256"]

_PREFIXES = ("module.", "_orig_mod.")
# Buffers older checkpoints lack; their defaults are harmless in eval mode.
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def _list(keys: list[str], limit: int = 10) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {p} (expected a torch file holding a state dict, "
            "{'state_dict': ...} or {'model': ...})"
        )
    return p


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``, unwrapped and with prefixes stripped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: "could not read checkpoint <path>: ..." for a corrupt, truncated or
            non-tensor file, or one holding no state dict.
    """
    return _read(path)[0]


def _read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Any]:
    """``(state dict, prune_info or None)`` of the checkpoint at ``path``."""
    p = _check_path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling / zip failure means unreadable
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"could not read checkpoint {p}: {type(e).__name__}: {msg}") from None
    info = obj.get("prune_info") if isinstance(obj, Mapping) else None
    sd: Any = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"could not read checkpoint {p}: it holds no state dict "
                         f"(found {type(obj).__name__})")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"could not read checkpoint {p}: entry {k!r} is not a tensor "
                             f"({type(v).__name__}); expected a state dict")
        for pre in _PREFIXES:
            while k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out, (dict(info) if isinstance(info, Mapping) else None)


def _is_structured(info: Any) -> bool:
    while isinstance(info, Mapping):
        if info.get("kind") == "structured":
            return True
        info = info.get("previous")
    return False


def _plain(x: Any) -> Any:
    """``x`` as plain Python containers and scalars (what ``weights_only`` loading accepts)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if hasattr(x, "item") and hasattr(x, "dtype"):  # numpy scalar
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (in place) and return ``model``.

    Every parameter and buffer of ``model`` must be present with the same shape
    (``num_batches_tracked`` may be missing) and every stored tensor must belong to
    ``model``; floating tensors must be finite. A checkpoint written by
    :func:`save_checkpoint` from a pruned network carries its ``prune_info``: it is set on
    ``model``, and a structurally pruned (smaller) network is rebuilt from the dense
    ``model`` first (:func:`prunecal.prune.restore_structure`), so
    ``create(name, weights=path)`` loads it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, or a checkpoint that does not fit; the message
            names the missing and unexpected keys and the shape mismatches.
    """
    sd, info = _read(path)
    own = model.state_dict()
    target = model  # the net the checks run on: a restructured copy for a pruned checkpoint
    if info is not None and _is_structured(info) and any(
            k in sd and sd[k].shape != v.shape for k, v in own.items()):
        from prunecal.prune.structured import restore_structure  # lazy: keeps models light

        target = copy.deepcopy(model)  # ``model`` stays untouched if the checkpoint does not fit
        try:
            restore_structure(target, info)
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint {path} holds a structurally pruned network whose "
                             f"structure does not fit {type(model).__name__}: {e}") from None
        own = target.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_list(shapes, 5)}")
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts))
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"checkpoint {path} has non-finite (NaN/inf) values in: {_list(bad)}")
    if target is not model:
        restore_structure(model, info)
    model.load_state_dict(sd, strict=False)
    if info is not None:
        model.prune_info = info
    return model


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``{'state_dict': model.state_dict(), **meta}`` to ``path`` atomically.

    The file is written beside ``path`` and renamed into place, so a reader never sees a
    partial file. ``meta`` values should be plain types (numbers, strings, lists,
    dicts, tensors) so that ``weights_only`` loading accepts them. A pruned ``model``'s
    ``prune_info`` is stored too (as plain types, key ``'prune_info'``) unless ``meta``
    sets that key. Returns the path.
    """
    if "state_dict" in meta:
        raise ValueError("meta may not contain the key 'state_dict'")
    info = getattr(model, "prune_info", None)
    if isinstance(info, Mapping) and "prune_info" not in meta:
        meta["prune_info"] = _plain(info)
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    return atomic_write(path, lambda f: torch.save(payload, f))


def file_sha256(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path`` (read in ``chunk_size``-byte chunks)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"file not found: {p}")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()
