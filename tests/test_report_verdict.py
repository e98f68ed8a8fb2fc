"""prunecal.eval.verdict: the better / within / worse rule, as pure functions, and its use in the
report's verdict table (cell classes, the 'safe & faster' mark)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from prunecal.eval import verdict as V


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 14, 30):
        assert V.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert V.t975(200) == 1.96
    with pytest.raises(ValueError):
        V.t975(0)


def test_mean_std():
    assert V.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert V.mean_std([5.0]) == (5.0, 0.0, 1)
    m, sd, n = V.mean_std([None, float("nan")])
    assert n == 0 and math.isnan(m)


def test_network_interval_widens_with_seed_spread():
    assert V.network_interval(0.9, 0.0, 1, (0.88, 0.92)) == (0.88, 0.92)
    # 2 seeds, sd 0.02: mean +- 2 sd = [0.86, 0.94] is wider than the bootstrap CI
    assert V.network_interval(0.9, 0.02, 2, (0.88, 0.92)) == pytest.approx((0.86, 0.94))
    assert V.network_interval(0.9, 0.001, 3, (0.88, 0.92)) == (0.88, 0.92)
    assert V.network_interval(0.9, 0.0, 1, None) is None
    assert V.network_interval(0.9, 0.01, 2, None) == pytest.approx((0.88, 0.92))


@pytest.mark.parametrize("pruned,unpruned,hib,want", [
    ((0.85, 0.87), (0.88, 0.92), True, V.WORSE),     # accuracy below the unpruned interval
    ((0.93, 0.95), (0.88, 0.92), True, V.BETTER),
    ((0.87, 0.89), (0.88, 0.92), True, V.WITHIN),    # overlap
    ((0.92, 0.93), (0.88, 0.92), True, V.WITHIN),    # touching counts as overlap
    ((0.05, 0.06), (0.02, 0.03), False, V.WORSE),    # ECE above: worse
    ((0.01, 0.015), (0.02, 0.03), False, V.BETTER),
    (None, (0.02, 0.03), False, V.NA),
])
def test_overlap_class(pruned, unpruned, hib, want):
    assert V.overlap_class(pruned, unpruned, higher_is_better=hib) == want


def test_paired_interval_is_a_t_interval():
    d = [0.01, 0.03, 0.02, 0.04]
    m, lo, hi = V.paired_interval(d)
    h = 3.182 * np.std(d, ddof=1) / 2
    assert (m, lo, hi) == pytest.approx((0.025, 0.025 - h, 0.025 + h))
    assert V.interval_class(lo, hi, higher_is_better=False) == V.WORSE  # ECE rose consistently
    assert V.interval_class(-0.01, 0.02, higher_is_better=False) == V.WITHIN
    assert V.interval_class(-0.03, -0.01, higher_is_better=False) == V.BETTER
    assert V.paired_interval([0.1]) is None


def test_ratio_class():
    assert V.ratio_class(1.05, 0.10) == V.WITHIN
    assert V.ratio_class(1.2, 0.10) == V.BETTER
    assert V.ratio_class(0.85, 0.10) == V.WORSE
    assert V.ratio_class(1 / 1.1, 0.10) == V.WITHIN
    assert V.ratio_class(None, 0.10) == V.NA


def test_overall():
    ok = {k: V.WITHIN for k in V.SAFETY_KEYS}
    assert V.overall({**ok, "speedup": V.BETTER}) == "safe & faster"
    assert V.overall({**ok, "accuracy": V.BETTER, "speedup": V.WITHIN}) == "safe, not faster"
    assert V.overall({**ok, "ece_ts": V.WORSE, "speedup": V.BETTER}) == "faster; worse ECE (TS)"
    assert V.overall({**ok, "mce": V.NA, "cece": V.NA, "speedup": V.BETTER}) == "safe & faster"
    assert V.overall({"accuracy": V.NA, "speedup": V.BETTER}) == "no clean interval"
    assert V.overall({**ok, "accuracy": V.WORSE, "mce": V.WORSE}) == "worse accuracy, mCE"


def test_verdict_table_marks_safe_and_fast(tmp_path):
    """A pruned network inside every interval and 3x faster is marked safe & faster (green)."""
    from test_report_content import BASE, build_synthetic, html_tables, md_tables

    from prunecal.eval.report import build_report
    from prunecal.eval.store import Store

    build_synthetic(tmp_path, nets=(BASE,), seeds=(0,), corruptions=("fog", "snow"))
    with Store(tmp_path / "results.sqlite") as st:
        base = [u for u in st.units() if u["backend"] == "csr" or u["corruption"] == "clean"]
        for u in base:  # a copy of the unpruned network as 'global_magnitude @ 0.7', 3x faster on csr
            u = dict(u, method="global_magnitude", sparsity=0.7, bytes_sparse=30_000)
            if u["backend"] == "csr":
                u["images_per_s"] *= 3
            # corrupted ECE changes that differ in sign: the t interval contains 0
            if u["corruption"] != "clean":
                u["ece"] += 0.001 * (1 if u["corruption"] == "fog" else -1)
            assert st.insert_unit(u)
    paths = build_report(tmp_path)
    row = md_tables(paths["md"].read_text(encoding="utf-8"))["Verdict: safe and fast?"][1]
    assert row["verdict"] == "safe & faster" and row["Δ acc (pp)"] == "+0.0"
    ht = html_tables(paths["html"].read_text(encoding="utf-8"))[0]
    header, cls = ht["rows"][0], ht["cls"][2]
    assert cls[header.index("verdict")] == "safe"
    assert cls[header.index("Δ acc (pp)")] == "within" and cls[header.index("speed-up")] == "better"
    assert cls[header.index("Δ cECE (pp)")] == "within"
    assert "global_magnitude — one-shot: at 0.7: acc" in paths["md"].read_text(encoding="utf-8")


# ---- mutation-run survivors (scripts/mutation.sh report/verdict) ----------------------------------
def test_t_table_every_df_and_error():
    from scipy import stats

    for df in range(1, 31):  # the table is rounded to 3 decimals
        assert V.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4), df
    assert V.t975(31) == 1.96
    with pytest.raises(ValueError) as e:
        V.t975(0)
    assert str(e.value) == "df must be >= 1, got 0"


def test_interval_and_ratio_boundaries():
    # an interval touching the null on either end still contains it
    assert V.interval_class(0.0, 0.02, higher_is_better=False) == V.WITHIN
    assert V.interval_class(-0.02, 0.0, higher_is_better=False) == V.WITHIN
    assert V.interval_class(0.001, 0.02, higher_is_better=True) == V.BETTER
    # touching intervals overlap, on either side
    assert V.overlap_class((0.85, 0.88), (0.88, 0.92), higher_is_better=True) == V.WITHIN
    assert V.overlap_class((0.92, 0.95), (0.88, 0.92), higher_is_better=True) == V.WITHIN
    assert V.overlap_class((0.85, 0.87), None, higher_is_better=True) == V.NA
    # a one-sided (NaN) CI with one seed is no interval
    assert V.network_interval(0.9, 0.0, 1, (0.88, math.nan)) is None
    assert V.network_interval(0.9, 0.0, 1, (math.nan, 0.92)) is None
    # the speed band is inclusive: [1/1.1, 1.1]
    assert V.ratio_class(1 + 0.10, 0.10) == V.WITHIN
    assert V.ratio_class(1 / (1 + 0.10), 0.10) == V.WITHIN
    for bad in (0.0, -1.0, math.nan, math.inf):
        assert V.ratio_class(bad, 0.10) == V.NA, bad


def test_paired_interval_with_two_values():
    d = [0.01, 0.03]
    m, lo, hi = V.paired_interval(d)
    h = 12.706 * np.std(d, ddof=1) / math.sqrt(2)  # Student t, 1 df
    assert (m, lo, hi) == pytest.approx((0.02, 0.02 - h, 0.02 + h))


def test_overall_names_every_worse_cell():
    ok = {k: V.WITHIN for k in V.SAFETY_KEYS}
    assert V.overall({**ok, "ece": V.WORSE, "cece": V.WORSE}) == "worse ECE, cECE"
    assert V.overall({**ok, "ece": V.WORSE, "ece_ts": V.WORSE, "mce": V.WORSE, "cece": V.WORSE,
                      "accuracy": V.WORSE, "speedup": V.BETTER}) == "faster; worse accuracy, ECE, ECE (TS), mCE, cECE"
    assert V.overall({"speedup": V.BETTER}) == "no clean interval"  # accuracy not given at all
    assert V.overall({"speedup": V.BETTER, "ece": V.WORSE}) == "faster; worse ECE"
