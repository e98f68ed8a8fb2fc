"""Content-keyed artefact cache of the sweep's stages, with a digest on every file.

Layout: ``root/<kind>/<key><suffix>`` plus a manifest ``<file>.sha256`` (JSON: sha256 and size of
the artefact's bytes) written atomically right after the artefact. Every read verifies the
manifest: an artefact with no manifest, an unreadable one or another digest is reported in one
log line and rebuilt, never used. Models are stored as checkpoints (state dict + plain-type
``prune_info`` / metadata) and read with ``torch.load(weights_only=True)``: a planted pickle
cannot run code. JSON artefacts (temperatures) are plain text.

Keys (:func:`stage_key`) chain a stage's parameters to its parent's key, so a fine-tuned model
is keyed by its pruned parent, which is keyed by the base weights' sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from prunecal._atomic import atomic_write
from prunecal.models.checkpoint import file_sha256

log = logging.getLogger("prunecal.eval")


def stage_key(parent: str, stage: str, **params: Any) -> str:
    """File-name-safe key of a stage's artefact: ``<stage>_<24 hex digits>`` of the parent key
    and the stage's parameters (JSON, sorted keys; floats rounded to 9 significant digits)."""
    def norm(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.9g}")
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    text = json.dumps([parent, stage, {k: norm(v) for k, v in sorted(params.items())}],
                      sort_keys=True, default=str)
    return f"{stage}_" + hashlib.sha256(text.encode()).hexdigest()[:24]


class ArtefactError(ValueError):
    """An artefact on disk failed its check (missing manifest, digest mismatch, unreadable)."""


class ArtefactCache:
    """Verified artefacts under ``root`` (created on first write).

    Args:
        root: the cache folder (``OUT/cache`` or ``--cache-dir``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.rebuilt = 0  # artefacts found damaged and rebuilt (for tests and the log)

    def path(self, kind: str, key: str, suffix: str = ".pt") -> Path:
        return self.root / kind / f"{key}{suffix}"

    @staticmethod
    def _manifest(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    # -- bytes ---------------------------------------------------------------------------
    def write(self, path: Path, writer: Callable[[Any], None]) -> str:
        """Write an artefact with ``writer(file)``: its manifest first, then the artefact, each
        atomically; returns its sha256. In that order an artefact is never visible without its
        manifest, so a concurrent reader (another process on the same cache) never takes a
        half-published artefact for a damaged one and removes it."""
        buf = io.BytesIO()
        writer(buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        manifest = json.dumps({"sha256": digest, "bytes": len(data)}).encode()
        atomic_write(self._manifest(path), lambda f: f.write(manifest))
        atomic_write(path, lambda f: f.write(data))
        return digest

    def check(self, path: Path) -> bool:
        """True when ``path`` exists and matches its manifest; a damaged artefact (no or bad
        manifest, other digest) is logged in one line, removed and reported as absent."""
        if not path.is_file():
            return False
        problem = None
        try:
            man = json.loads(self._manifest(path).read_text())
            expected = man["sha256"] if isinstance(man, dict) else None
        except (OSError, ValueError, KeyError, TypeError):
            expected = None
        if not isinstance(expected, str):
            problem = "has no valid digest manifest"
        else:
            got = file_sha256(path)
            if got != expected:
                problem = f"fails its digest check (sha256 {got[:12]}.. != recorded {expected[:12]}..)"
        if problem is None:
            return True
        self.discard(path, f"artefact {path} {problem}: rebuilding it")
        return False

    def discard(self, path: Path, message: str) -> None:
        """Log ``message`` (one line) and remove the artefact and its manifest."""
        log.warning("%s", message)
        self.rebuilt += 1
        for p in (path, self._manifest(path)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # -- models --------------------------------------------------------------------------
    def save_model(self, path: Path, model: nn.Module, *, optimizer: dict | None = None,
                   **meta: Any) -> str:
        """Store ``model`` as a checkpoint: state dict, ``prune_info`` and ``meta`` as plain
        types, and optionally an optimizer ``state_dict()`` (tensors and numbers)."""
        from prunecal.models.checkpoint import _plain

        info = getattr(model, "prune_info", None)
        payload = {"state_dict": {k: v.detach().cpu().contiguous().clone()
                                  for k, v in model.state_dict().items()},
                   "prune_info": _plain(info) if isinstance(info, dict) else None,
                   "meta": _plain(meta), "optimizer": optimizer}
        return self.write(path, lambda f: torch.save(payload, f))

    def load_model(self, path: Path, build: Callable[[], nn.Module]
                   ) -> tuple[nn.Module, dict, dict | None] | None:
        """``(model, meta, optimizer state or None)`` stored at ``path``, the weights loaded into
        ``build()`` (the dense architecture; a structurally pruned checkpoint is restored onto
        it); ``None`` when the artefact is absent or damaged (then removed). Never unpickles
        arbitrary objects (``weights_only=True``)."""
        if not self.check(path):
            return None
        from prunecal.models.checkpoint import load_checkpoint

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            model = load_checkpoint(build(), path)
        except Exception as exc:  # noqa: BLE001 - unpickling / zip / shape errors: all mean unusable
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.discard(path, f"artefact {path} is unreadable ({first}): rebuilding it")
            return None
        meta = payload.get("meta") if isinstance(payload, dict) else None
        opt = payload.get("optimizer") if isinstance(payload, dict) else None
        return model.eval(), dict(meta or {}), opt

    # -- small JSON artefacts ------------------------------------------------------------
    def get_json(self, path: Path) -> dict[str, Any] | None:
        """The verified JSON object at ``path`` or ``None`` (absent or damaged: removed)."""
        if not self.check(path):
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            self.discard(path, f"artefact {path} is not valid JSON: rebuilding it")
            return None
        return value if isinstance(value, dict) else None

    def put_json(self, path: Path, value: dict[str, Any]) -> str:
        data = json.dumps(value, sort_keys=True).encode()
        return self.write(path, lambda f: f.write(data))


__all__ = ["ArtefactCache", "ArtefactError", "stage_key"]
