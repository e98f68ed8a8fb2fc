"""Pruned-model cache: ``out/cache/models/<key>.pt`` keyed by (model, weights hash, method,
sparsity, seed), written atomically (temp file + ``os.replace``), plus small JSON side files
(e.g. the fitted temperature, keyed additionally by the calibration data)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from prunecal._atomic import atomic_write


def model_key(model: str, weights_sha256: str, method: str, sparsity: float, seed: int) -> str:
    """File-name-safe key of one pruned model."""
    text = json.dumps([model, weights_sha256, method, round(float(sparsity), 6), int(seed)])
    return f"{model}_{method}_{sparsity:g}_s{seed}_" + hashlib.sha256(text.encode()).hexdigest()[:12]


class ModelCache:
    """Cache of pruned models under ``root`` (whole modules: structured pruning changes shapes).

    Args:
        root: folder, created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "models" / f"{key}.pt"

    def get_or_create(self, key: str, build: Callable[[], nn.Module]) -> tuple[nn.Module, bool]:
        """The cached model for ``key`` or ``build()`` (then cached); ``(model, was_cached)``.

        An unreadable cache file (e.g. truncated by a crash of another tool) is rebuilt.
        """
        p = self.path(key)
        if p.is_file():
            try:
                m = torch.load(p, map_location="cpu", weights_only=False)
                if isinstance(m, nn.Module):
                    return m.eval(), True
            except Exception:
                pass
        m = build()
        atomic_write(p, lambda f: torch.save(m, f))
        return m.eval(), False

    def get_json(self, key: str) -> dict[str, Any] | None:
        p = self.root / "models" / f"{key}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def put_json(self, key: str, value: dict[str, Any]) -> None:
        p = self.root / "models" / f"{key}.json"
        atomic_write(p, lambda f: f.write(json.dumps(value).encode()))


__all__ = ["ModelCache", "model_key"]
