"""Temperature scaling (Guo et al. 2017): one scalar ``T > 0`` dividing the logits.

``T`` minimises the mean NLL of ``softmax(logits / T)`` on held-out data. The optimiser is
``scipy.optimize.minimize(method='L-BFGS-B')`` on ``u = log T`` (so ``T`` stays positive) with
the analytic gradient ``dNLL/du = -(1/N) sum_i (E_{p_i}[z_i] - z_{i,y_i}) / T``, in float64,
started at ``T = 1`` and bounded to ``T in [1e-3, 1e3]``. On a separable set the NLL keeps
falling as ``T -> 0``; the fit then stops where the gradient vanishes (NLL ~ 0) or at the bound.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from .metrics._validate import check_logits, check_logits_labels
from .metrics.summary import summary_from_logits

T_BOUNDS = (1e-3, 1e3)


def _nll_and_grad(u: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    t = float(np.exp(u[0]))
    logp = log_softmax(z / t, axis=1)
    rows = np.arange(y.size)
    f = -np.mean(logp[rows, y])
    ez = np.sum(np.exp(logp) * z, axis=1)  # E_p[z]
    g = -np.mean(ez - z[rows, y]) / t
    return float(f), np.array([g])


def temperature_nll(logits: Any, labels: Any, t: float) -> float:
    """Mean NLL (nats) of ``softmax(logits / t)``."""
    z, y = check_logits_labels(logits, labels)
    return _nll_and_grad(np.array([np.log(_check_t(t))]), z, y)[0]


def _check_t(t: Any) -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a number, got {type(t).__name__}") from None
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite positive number, got {t!r}")
    return t


def fit_temperature(logits: Any, labels: Any, *, max_iter: int = 100, tol: float = 1e-10) -> float:
    """Temperature ``T > 0`` minimising the NLL of ``softmax(logits (N, C) / T)`` vs ``labels (N,)``."""
    z, y = check_logits_labels(logits, labels)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    res = minimize(_nll_and_grad, x0=np.zeros(1), args=(z, y), jac=True, method="L-BFGS-B",
                   bounds=[(np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1]))],
                   options={"maxiter": int(max_iter), "ftol": tol, "gtol": 1e-10})
    t = float(np.exp(res.x[0]))
    if not np.isfinite(t):  # pragma: no cover - guarded by the bounds
        raise RuntimeError(f"temperature fit diverged: {res.message}")
    return t


def apply_temperature(logits: Any, t: float) -> Any:
    """``logits (N, C) / t``, keeping the input type (torch tensor in, torch tensor out, same
    dtype and device, autograd kept; else float64 numpy). NaN/Inf logits raise ``ValueError``."""
    t = _check_t(t)
    if hasattr(logits, "detach") and hasattr(logits, "cpu"):
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (N, C), got shape {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
        if not bool(logits.isfinite().all()):
            n_bad = int((~logits.isfinite()).any(dim=1).sum()) if logits.shape[1] else 0
            raise ValueError(f"logits contains NaN or Inf ({n_bad} rows)")
        return logits / t
    return check_logits(logits) / t


class TemperatureScaler:
    """Fit/transform wrapper: ``TemperatureScaler().fit(val_logits, val_labels).transform(test_logits)``.

    Attributes: ``temperature_`` (float, after :meth:`fit`).
    """

    def __init__(self, *, max_iter: int = 100) -> None:
        self.max_iter = max_iter
        self.temperature_: float | None = None

    def fit(self, logits: Any, labels: Any) -> "TemperatureScaler":
        self.temperature_ = fit_temperature(logits, labels, max_iter=self.max_iter)
        return self

    def _t(self) -> float:
        if self.temperature_ is None:
            raise RuntimeError("TemperatureScaler is not fitted: call fit(logits, labels) first")
        return self.temperature_

    def transform(self, logits: Any) -> Any:
        """Scaled logits ``logits / T``."""
        return apply_temperature(logits, self._t())

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)``, float64 ``(N, C)``."""
        return np.exp(log_softmax(check_logits(logits) / self._t(), axis=1))

    def __repr__(self) -> str:
        return f"TemperatureScaler(temperature_={self.temperature_})"


def calibration_report(logits_val: Any, labels_val: Any, logits_test: Any, labels_test: Any, *,
                       n_bins: int = 15) -> dict[str, Any]:
    """Fit ``T`` on the validation split, report test metrics before and after.

    Returns ``{'temperature': T, 'before': summary, 'after': summary}`` where each summary is
    :func:`prunecal.metrics.summary_from_logits` of the test logits.
    """
    t = fit_temperature(logits_val, labels_val)
    return {"temperature": t,
            "before": summary_from_logits(logits_test, labels_test, 1.0, n_bins=n_bins),
            "after": summary_from_logits(logits_test, labels_test, t, n_bins=n_bins)}
