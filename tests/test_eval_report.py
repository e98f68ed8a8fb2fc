"""prunecal.eval.report on a synthetic store: mCE / relative mCE against an independent formula,
tables, findings, figures, and the 'why not computed' notes."""
from __future__ import annotations

import numpy as np
import pytest

from prunecal.corruptions import BENCHMARK
from prunecal.eval.report import build_report, load_view
from prunecal.eval.store import Store

SEVS = (1, 3)


def _row(method, sparsity, corruption, severity, acc, ece, backend="csr", ips=100.0, seed=0,
         epochs=0, recipe="none"):
    n = 15
    edges = np.linspace(0, 1, n + 1)
    rel = {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": [10] * n,
           "confidence": (edges[:-1] + 1 / 30).tolist(), "accuracy": [acc] * n, "binning": "width"}
    m = {"accuracy": acc, "ece": ece, "mce": 2 * ece, "nll": 1 - acc, "brier": 0.5, "aurc": 0.05}
    return dict(
        config_hash="h", model="resnet20", method=method, sparsity=sparsity, seed=seed, finetune_epochs=epochs,
        finetune_recipe=recipe, corruption=corruption,
        severity=severity, backend=backend, n_images=150, n_bins=15, binning="width", temperature=1.5,
        accuracy=acc, ece=ece, ece_ts=ece / 2, nll=1 - acc, nll_ts=0.9 - acc, metrics_json=m,
        metrics_ts_json={**m, "ece": ece / 2}, reliability_json={"raw": rel, "ts": rel},
        ci_json={"accuracy": [acc - 0.02, acc + 0.02], "ece": [ece - 0.01, ece + 0.01],
                 "ece_ts": [ece / 2 - 0.01, ece / 2 + 0.01], "nll": [0, 1]} if corruption == "clean" else None,
        images_per_s=ips, eval_seconds=1.0, threads=2, batch_size=64, bytes_dense=1000,
        bytes_sparse=1000 - int(900 * sparsity), sparsity_achieved=sparsity, started_at="a", finished_at="b")


def _acc(method, s, c, sev):
    """A deterministic, varied accuracy table."""
    i = BENCHMARK.index(c) if c in BENCHMARK else 0
    base = 0.9 - 0.04 * sev - 0.01 * i
    return base - (0.1 + 0.005 * i) * s if method != "none" else base


def make_store(path, corruptions=BENCHMARK, with_dense=True):
    cfg = {"model": "resnet20", "methods": ["global_magnitude"], "sparse_backend": ["csr", "dense"],
           "n_bins": 15, "binning": "width", "batch_size": 64, "threads": 2, "corruptions": list(corruptions),
           "n_calibration": 50, "n_evaluation": 150}
    with Store(path / "results.sqlite") as st:
        st.record_config("h", cfg)
        for m, s in (("none", 0.0), ("global_magnitude", 0.5), ("global_magnitude", 0.9)):
            st.insert_unit(_row(m, s, "clean", 0, 0.92 - 0.2 * s, 0.03 + 0.1 * s, ips=100 * (1 + 3 * s)))
            if with_dense:
                st.insert_unit(_row(m, s, "clean", 0, 0.92 - 0.2 * s, 0.03 + 0.1 * s, backend="dense"))
            for c in corruptions:
                for sev in SEVS:
                    st.insert_unit(_row(m, s, c, sev, _acc(m, s, c, sev), 0.05 + 0.01 * sev + 0.1 * s))
    return path


def test_mce_matches_independent_formula(tmp_path):
    make_store(tmp_path)
    with Store(tmp_path / "results.sqlite") as st:
        v = load_view(st)
    for s in (0.5, 0.9):
        rb = v.robustness("global_magnitude", s)
        e = {(c, k): 1 - _acc("gm", s, c, k) for c in BENCHMARK for k in SEVS}
        b = {(c, k): 1 - _acc("none", 0, c, k) for c in BENCHMARK for k in SEVS}
        mce = np.mean([sum(e[c, k] for k in SEVS) / sum(b[c, k] for k in SEVS) for c in BENCHMARK])
        e0, b0 = 1 - (0.92 - 0.2 * s), 1 - 0.92
        rel = np.mean([sum(e[c, k] - e0 for k in SEVS) / sum(b[c, k] - b0 for k in SEVS) for c in BENCHMARK])
        assert rb["mce"] == pytest.approx(mce)
        assert rb["rel_mce"] == pytest.approx(rel)
        assert rb["mean_error_15"] == pytest.approx(np.mean(list(e.values())))
    assert v.robustness("none", 0.0)["mce"] == pytest.approx(1.0)
    # the change in error under fog, averaged over severities
    d = v.delta_vs_base("global_magnitude", 0.5, "fog", "error")
    i = BENCHMARK.index("fog")
    assert d == pytest.approx((0.1 + 0.005 * i) * 0.5)


def test_report_tables_and_findings(tmp_path):
    make_store(tmp_path)
    paths = build_report(tmp_path)
    md = paths["md"].read_text()
    with Store(tmp_path / "results.sqlite") as st:
        v = load_view(st)
    mce = v.robustness("global_magnitude", 0.9)["mce"]
    assert f"| {100 * mce:.1f} |" in md
    assert "| **unpruned (reference)** | 0 | one-shot | 1 |" in md and "| 100.0 | 100.0 |" in md  # baseline mCE
    assert md.count("| **unpruned (reference)** |") == 5  # once per table (speed: once per backend)
    assert ("global_magnitude — one-shot: no sparsity safe; at 0.9: acc 74.0 % (-18.0 pp), "
            "ECE 12.0 % (TS 6.0 %)") in md
    assert "- fastest — global_magnitude at 0.9 (one-shot) on csr: 370 images/s, 3.70x" in md
    assert len(paths["figures"]) == 7
    for f in paths["figures"]:
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
    # speed-up is relative to the unpruned network on dense (100 images/s)
    assert "| global_magnitude | 0.9 | one-shot | 1 | csr | 370 | 3.70x |" in md
    # the verdict row: accuracy far outside the intervals (worse), 3.7x faster (better)
    assert ("| global_magnitude | 0.9 | one-shot | 1 | -18.0 🔴 | +9.00 🔴 | +4.50 🔴 | 148.7 🔴 | "
            "+9.00 🔴 | 3.70x (csr) 🟢 | 5.26x 🟢 | faster; worse accuracy, ECE, ECE (TS), mCE, cECE |") in md


def test_mce_not_computed_says_why(tmp_path):
    make_store(tmp_path, corruptions=("fog", "snow"), with_dense=False)
    md = build_report(tmp_path)["md"].read_text()
    assert "mCE not computed where shown '–': 13 of the 15 benchmark corruptions missing" in md
    assert "speed-up relative to the unpruned network on 'csr'" in md


def test_empty_and_unknown_study(tmp_path):
    with Store(tmp_path / "results.sqlite") as st:
        with pytest.raises(ValueError, match="holds no study"):
            load_view(st)
        st.record_config("abc", {"model": "resnet20"})
        with pytest.raises(ValueError, match="matches 0 studies"):
            load_view(st, "zzz")
    paths = build_report(tmp_path)  # a study without units still renders
    assert "No unit has been stored yet." in paths["md"].read_text()
