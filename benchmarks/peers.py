"""Peer runtimes for the sparse-inference benchmarks: ONNX Runtime and DeepSparse (both optional).

Reference setup (issue "Fast sparse inference: beat DeepSparse on pruned CIFAR ResNets"):
pretrained CIFAR ResNet-56, global magnitude pruning of every conv except the 3-channel stem
(classifier kept dense, BN not folded in torch), exported to ONNX from the pruned torch model
with a static input shape ``(batch, 3, 32, 32)``.

- :func:`build_model` / :func:`pruned_model`: the (pruned) network, from :mod:`prunecal.models`
  and :mod:`prunecal.prune`; every benchmark builds its networks here.
- :func:`export_onnx`: torch -> ONNX (legacy TorchScript exporter, opset 13, IR 7, which the
  onnx 1.14 of DeepSparse's venv still reads). The exporter folds eval-mode BN into the convs;
  that scales output channels and so keeps every zero weight zero.
- :func:`ort_session` / :func:`time_onnxruntime`: ONNX Runtime in process,
  ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, sequential, all graph optimisations.
- :func:`deepsparse_python` / :func:`run_deepsparse`: DeepSparse 1.8.0 in its own venv
  (``scripts/setup_peers.sh``) through ``benchmarks/deepsparse_runner.py`` in a subprocess,
  compiled for :func:`deepsparse_isa` (``PRUNECAL_DEEPSPARSE_ISA``; AVX2 when ``PRUNECAL_ISA=avx2``).
- :func:`time_torch`: torch eager, ``torch.set_num_threads(threads)``, inference mode.

Every runtime is timed by the same loop (:func:`deepsparse_runner.measure`: warm-up, then
about ``seconds`` of calls, images/s from the median call time), and each ONNX output is
checked against torch on the same input before it is timed.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from deepsparse_runner import ISAS, measure  # noqa: E402  (one timing loop for every runtime)

RUNNER = HERE / "deepsparse_runner.py"
DEFAULT_VENV_PYTHON = ROOT / ".venv-deepsparse" / "bin" / "python"
DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
ATOL = 1e-3
"""Max |logit difference| accepted between torch and an ONNX runtime (float32, ResNet-56)."""


class PeerUnavailable(RuntimeError):
    """A peer runtime is not installed (benchmarks skip on it)."""


# ---- models ----------------------------------------------------------------------------------
def shared_data_dirs() -> list[Path]:
    """Where the shared data folder may be, in the order to look: ``$PRUNECAL_SHARED_DATA`` when
    set, then ``../shared/data`` beside the checkout (the callers take the first that holds what
    they need)."""
    env = os.environ.get("PRUNECAL_SHARED_DATA")
    return ([Path(env)] if env else []) + [ROOT.parent / "shared" / "data"]


def weights_path(name: str = "resnet56") -> Path | None:
    """The pretrained checkpoint ``weights/<name>-*.th`` of the shared data folder, if present."""
    for cand in shared_data_dirs():
        hits = sorted((cand / "weights").glob(f"{name}-*.th")) if (cand / "weights").is_dir() else []
        if hits:
            return hits[0]
    return None


def build_model(name: str = "resnet56") -> tuple[nn.Module, str]:
    """``(model in eval mode, "pretrained" | "random")`` for any registered model name;
    pretrained where the checkpoint exists, else the default initialisation (seed 0) with
    randomised BatchNorm statistics (running mean U(-0.1, 0.1), variance U(0.5, 1.5)), so that
    folding BN is not a no-op."""
    from prunecal import models

    if name not in models.available():
        raise ValueError(f"name must be one of {sorted(models.available())}, got {name!r}")
    ckpt = weights_path(name)
    torch.manual_seed(0)
    model = models.create(name, weights=ckpt).eval()
    if ckpt is None:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
    return model, ("pretrained" if ckpt else "random")


def prune_convs(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy with the ``sparsity`` fraction of smallest-|w| conv weights zeroed (one global
    threshold over every conv except the 3-channel stem; classifier dense)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if sparsity == 0.0:
        return model
    from prunecal.prune import prune

    return prune(model, "global_magnitude", sparsity, keep_first_conv=True, keep_classifier=True)


@functools.lru_cache(maxsize=None)
def pruned_model(name: str = "resnet56", sparsity: float = 0.0) -> nn.Module:
    """Cached :func:`prune_convs` of :func:`build_model` (``sparsity=0``: the dense model)."""
    return prune_convs(build_model(name)[0], sparsity)


def conv_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over every conv except the 3-channel stem."""
    ws = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels != 3]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


def sample_input(batch: int, seed: int = 0) -> torch.Tensor:
    """A ``(batch, 3, 32, 32)`` float32 N(0, 1) input (speed does not depend on the values)."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---- ONNX ------------------------------------------------------------------------------------
def export_onnx(model: nn.Module, path: str | os.PathLike, batch: int, *, opset: int = 13) -> Path:
    """Export ``model`` (eval mode) for a static ``(batch, 3, 32, 32)`` input named ``input``
    (output ``logits``) with the legacy TorchScript exporter; returns ``path``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    path = Path(path)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample_input(batch),), str(path), dynamo=False,
                          opset_version=opset, input_names=["input"], output_names=["logits"],
                          do_constant_folding=True)
    return path


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_session(onnx_path: str | os.PathLike, threads: int):
    """An ``onnxruntime.InferenceSession`` on the CPU with ``threads`` intra-op threads,
    one inter-op thread, sequential execution and every graph optimisation."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise PeerUnavailable("onnxruntime is not installed (pip install 'prunecal[peers]')") from e
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def torch_reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).numpy()


def check_close(out: np.ndarray, ref: np.ndarray, what: str, atol: float = ATOL) -> float:
    """Max |out - ref|; ``AssertionError`` naming ``what`` when it exceeds ``atol``."""
    if out.shape != ref.shape:
        raise AssertionError(f"{what}: output shape {out.shape} != torch {ref.shape}")
    diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
    if not diff <= atol:
        raise AssertionError(f"{what}: max |logit - torch| = {diff:.3g} > {atol}")
    return diff


def time_torch(model: nn.Module, batch: int, threads: int, seconds: float = 2.0) -> dict[str, Any]:
    """Torch eager images/s (see :func:`deepsparse_runner.measure`) at ``threads`` threads."""
    x = sample_input(batch)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            stats = measure(lambda: model(x), batch, seconds)
    finally:
        torch.set_num_threads(old)
    return {"runtime": "torch", "version": torch.__version__, "batch": batch, "threads": threads,
            **stats, "max_abs_diff": 0.0}


def time_onnxruntime(model: nn.Module, batch: int, threads: int, seconds: float = 2.0, *,
                     workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Export ``model``, check ORT against torch, then ORT images/s at ``threads`` threads."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = export_onnx(model, Path(d) / "model.onnx", batch)
        sess = ort_session(path, threads)
    x = sample_input(batch)
    xn = x.numpy()
    diff = check_close(sess.run(None, {"input": xn})[0], torch_reference(model, x), "onnxruntime")
    stats = measure(lambda: sess.run(None, {"input": xn}), batch, seconds)
    return {"runtime": "onnxruntime", "version": ort.__version__, "batch": batch,
            "threads": threads, **stats, "max_abs_diff": diff}


# ---- DeepSparse (separate venv) --------------------------------------------------------------
def deepsparse_python() -> Path | None:
    """The DeepSparse venv's interpreter: ``$PRUNECAL_DEEPSPARSE_PYTHON`` or
    ``<repo>/.venv-deepsparse/bin/python``; ``None`` where neither exists."""
    env = os.environ.get("PRUNECAL_DEEPSPARSE_PYTHON")
    cand = Path(env) if env else DEFAULT_VENV_PYTHON
    return cand if cand.is_file() and os.access(cand, os.X_OK) else None


def deepsparse_isa() -> str:
    """The ISA DeepSparse is told to compile for: ``$PRUNECAL_DEEPSPARSE_ISA`` (``native``,
    ``avx2``, ``avx512``) where set, else ``avx2`` when prunecal's path is forced to it
    (``PRUNECAL_ISA=avx2``: both runtimes then run AVX2 code, as on an AVX2-only CPU), else
    ``native``."""
    isa = os.environ.get("PRUNECAL_DEEPSPARSE_ISA", "").strip().lower()
    if isa and isa not in ISAS:
        raise ValueError(f"PRUNECAL_DEEPSPARSE_ISA={isa!r}: expected one of {', '.join(ISAS)}")
    if isa:
        return isa
    return "avx2" if os.environ.get("PRUNECAL_ISA", "").strip().lower() == "avx2" else "native"


def run_deepsparse(model: nn.Module, batch: int, threads: int, seconds: float = 2.0, *,
                   python: str | os.PathLike | None = None, timeout: float = 600.0,
                   workdir: str | os.PathLike | None = None, isa: str | None = None) -> dict[str, Any]:
    """Export ``model`` and time it with DeepSparse in the venv (``num_cores=threads``).

    The runner compiles the engine for ``isa`` (default :func:`deepsparse_isa`), checks its
    output against torch's on the same input, then times it with the same loop as the other
    runtimes; its JSON is returned (plus ``max_abs_diff`` and ``engine_isa``, the ISA the
    engine's banner says it compiled for: ``RuntimeError`` where that is not ``isa``, or where
    the engine warns that it has fewer cores than ``threads``). Raises :class:`PeerUnavailable` where no venv is found,
    ``RuntimeError`` (with the runner's stderr) where it fails, ``AssertionError`` where the
    output disagrees with torch by more than :data:`ATOL`.
    """
    py = Path(python) if python is not None else deepsparse_python()
    if py is None or not py.is_file():
        raise PeerUnavailable("DeepSparse venv not found: run scripts/setup_peers.sh or set "
                              "PRUNECAL_DEEPSPARSE_PYTHON")
    isa = isa or deepsparse_isa()
    x = sample_input(batch)
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        onnx_path = export_onnx(model, Path(d) / "model.onnx", batch)
        np.save(Path(d) / "x.npy", x.numpy())
        np.save(Path(d) / "ref.npy", torch_reference(model, x))
        cmd = [str(py), str(RUNNER), str(onnx_path), "--batch", str(batch), "--threads",
               str(threads), "--seconds", str(seconds), "--input", str(Path(d) / "x.npy"),
               "--reference", str(Path(d) / "ref.npy"), "--isa", isa]
        env = {**os.environ, "NM_DISABLE_ANALYTICS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"DeepSparse runner failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise RuntimeError(f"DeepSparse runner printed no JSON: {proc.stdout[-500:]!r}") from e
    if not res.get("max_abs_diff", float("inf")) <= ATOL:
        raise AssertionError(f"deepsparse: max |logit - torch| = {res.get('max_abs_diff')} > {ATOL}")
    said = proc.stdout + proc.stderr
    banner = re.search(r"system=([a-z0-9_]+)", said)
    res["engine_isa"] = banner.group(1) if banner else None
    if isa != "native" and not (res["engine_isa"] or "").startswith(isa):
        raise RuntimeError(f"DeepSparse compiled for {res['engine_isa']!r}, not the {isa!r} asked for")
    if "cores available in the calling process" in said:
        raise RuntimeError(f"DeepSparse ran on fewer cores than the {threads} threads asked for")
    return res
