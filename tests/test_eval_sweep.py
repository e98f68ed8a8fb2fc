"""End-to-end sweep on the shipped ResNet-20 and a few shipped images: store rows, report,
figures, CSV, idempotent re-run, changed config -> new units, backend equivalence."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from prunecal.eval import config as C
from prunecal.eval.cli import run
from prunecal.eval.store import Store
from prunecal.eval.sweep import BASELINE, model_groups, plan


def native_built() -> bool:
    try:
        import prunecal._C  # noqa: F401
    except ImportError:
        return False
    return True


# a missing or broken native core FAILS the csr units (CI builds it); only PRUNECAL_ALLOW_NO_NATIVE=1
# (pure-Python work, conftest.require_native) checks 'torch' as the second backend instead
ALLOW_NO_NATIVE = os.environ.get("PRUNECAL_ALLOW_NO_NATIVE") == "1"
BACKENDS = "dense,torch" if ALLOW_NO_NATIVE and not native_built() else "dense,csr"
ARGS = ["--limit", "40", "--methods", "global_magnitude,l1_filter", "--sparsities", "0,0.5",
        "--corruptions", "gaussian_noise,fog", "--severities", "1,5", "--sparse-backend", BACKENDS,
        "--batch-size", "16", "--n-bootstrap", "20", "--threads", "1", "--quiet", "--keep-logits"]
# 3 networks (unpruned, 2 pruned) x (clean + 2 x 2 corrupted) on the first backend + 3 clean
# units on the second backend
N_UNITS = 3 * 5 + 3


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert run(ARGS + ["--out", str(out)]) == 0
    return out


def test_plan_counts():
    from prunecal.eval.cli import build_parser, config_from_args

    cfg = C.resolve(config_from_args(build_parser().parse_args(ARGS)))
    assert model_groups(cfg) == [(BASELINE, 0.0), ("global_magnitude", 0.5), ("l1_filter", 0.5)]
    units = plan(cfg)
    assert len(units) == N_UNITS == len(set(units))
    assert [u.corruption for u in units[:6]] == ["clean"] * 6  # clean units first


def test_store_rows(study):
    with Store(study / "results.sqlite") as st:
        units = st.units()
        (cfg,) = st.configs()
    assert len(units) == N_UNITS
    keys = {(u["method"], u["sparsity"], u["corruption"], u["severity"], u["backend"]) for u in units}
    assert len(keys) == N_UNITS
    for u in units:
        assert u["n_images"] == 32 and u["n_bins"] == 15 and u["binning"] == "width"  # 8 calib
        assert 0 <= u["accuracy"] <= 1 and 0 <= u["ece"] <= 1 and u["temperature"] > 0
        assert u["images_per_s"] > 0 and u["threads"] == 1
        assert u["metrics_json"]["accuracy"] == u["accuracy"]
        assert len(u["reliability_json"]["raw"]["count"]) == 15
        assert sum(u["reliability_json"]["ts"]["count"]) == 32
        assert (u["ci_json"] is not None) == (u["corruption"] == "clean")
        assert u["bytes_dense"] > 0 and u["bytes_sparse"] > 0
        assert u["logits_path"] and (study / u["logits_path"]).is_file()
    base = [u for u in units if u["method"] == BASELINE]
    assert all(u["sparsity"] == 0 and abs(u["sparsity_achieved"]) < 1e-9 for u in base)
    gm = [u for u in units if u["method"] == "global_magnitude"]
    assert all(0.45 < u["sparsity_achieved"] < 0.55 for u in gm)
    assert cfg["config"]["n_evaluation"] == 32 and cfg["config"]["n_calibration"] == 8
    resolved = (study / "config.resolved.toml").read_text()
    assert cfg["config_hash"] in resolved
    again = C.config_from_mapping(C.load_config_file(study / "config.resolved.toml"))
    assert again.methods == ("global_magnitude", "l1_filter") and again.limit == 40


def test_metrics_match_independent_formula(study):
    """Accuracy / ECE / NLL stored for a unit agree with a direct numpy computation on its logits."""
    with Store(study / "results.sqlite") as st:
        u = [u for u in st.units() if u["corruption"] == "fog" and u["severity"] == 5][0]
    z = np.load(study / u["logits_path"])
    logits, labels = z["logits"].astype(np.float64), z["labels"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    assert u["accuracy"] == pytest.approx((pred == labels).mean())
    edges = np.linspace(0, 1, 16)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, 14)
    ece = sum(abs((pred[idx == b] == labels[idx == b]).mean() - conf[idx == b].mean()) * (idx == b).mean()
              for b in range(15) if (idx == b).any())
    assert u["ece"] == pytest.approx(ece, abs=1e-9)
    assert u["nll"] == pytest.approx(-np.log(p[np.arange(len(labels)), labels]).mean(), rel=1e-6)
    t = u["temperature"]
    pt = np.exp(logits / t - (logits / t).max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    assert u["nll_ts"] == pytest.approx(-np.log(pt[np.arange(len(labels)), labels]).mean(), rel=1e-6)


def test_backend_equivalence(study):
    primary, other = BACKENDS.split(",")
    if other == "torch":
        pytest.skip("prunecal._C is not built and PRUNECAL_ALLOW_NO_NATIVE=1: csr checked as 'torch' instead")
    with Store(study / "results.sqlite") as st:
        clean = [u for u in st.units() if u["corruption"] == "clean"]
    for u in [u for u in clean if u["backend"] == other]:
        ref = next(r for r in clean if r["backend"] == primary and r["method"] == u["method"]
                   and r["sparsity"] == u["sparsity"])
        a = np.load(study / ref["logits_path"])["logits"]
        b = np.load(study / u["logits_path"])["logits"]
        np.testing.assert_array_equal(a.argmax(1), b.argmax(1))
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)
        assert u["metrics_json"]["ref_argmax_agree"] == 1.0
        assert u["metrics_json"]["ref_max_abs_diff"] < 1e-3
        assert u["accuracy"] == ref["accuracy"]
        if u["method"] == "global_magnitude":
            assert u["bytes_sparse"] < u["bytes_dense"]


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024


def test_report_outputs(study):
    md = (study / "report.md").read_text()
    html = (study / "report.html").read_text()
    for title in ("Findings", "Clean accuracy and calibration", "Corruption robustness", "Speed and size"):
        assert f"## {title}" in md and f"<h2>{title}</h2>" in html
    figs = sorted((study / "figures").glob("*.png"))
    assert {f.name for f in figs} >= {"accuracy_ece_vs_sparsity.png", "reliability.png",
                                      "heatmap_error.png", "heatmap_ece.png", "speedup.png", "tradeoff.png"}
    assert all(_png_ok(f) for f in figs)
    for f in figs:
        assert f"](figures/{f.name})" in md
    assert html.count("data:image/png;base64,") == len(figs) and "src='figures/" not in html
    assert "13 of the 15 benchmark corruptions missing" in md  # mCE not computable: said why
    assert "- global_magnitude — " in md  # one findings line per method
    with open(study / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_UNITS
    assert {"config_hash", "method", "raw_ece", "ts_ece", "ci_accuracy_lo"} <= set(rows[0])


def test_findings_numbers_come_from_store(study):
    from prunecal.eval.findings import findings
    from prunecal.eval.report import load_view

    with Store(study / "results.sqlite") as st:
        v = load_view(st)
    text = findings(v)
    u0, u1 = v.clean_unit(BASELINE, 0.0), v.clean_unit("global_magnitude", 0.5)
    assert f"{100 * u0['ece']:.1f} %" in text and f"{100 * u1['ece']:.1f} %" in text


def test_rerun_is_idempotent_and_report_rebuilds(study, capsys):
    assert run(ARGS + ["--out", str(study), "--dry-run"]) == 0
    assert f"{N_UNITS} units, {N_UNITS} stored, 0 to run" in capsys.readouterr().out
    before = (study / "results.sqlite").stat().st_size
    assert run(ARGS + ["--out", str(study), "--no-report"]) == 0
    with Store(study / "results.sqlite") as st:
        assert st.count() == N_UNITS
    from prunecal.eval.cli import report_run

    (study / "report.md").unlink()
    assert report_run([str(study)]) == 0
    assert (study / "report.md").is_file()
    assert before > 0


def test_changed_config_starts_new_units(study):
    assert run(ARGS + ["--out", str(study), "--n-bins", "10", "--sparsities", "0",
                       "--corruptions", "none", "--no-report"]) == 0
    with Store(study / "results.sqlite") as st:
        cfgs = st.configs()
        assert len(cfgs) == 2
        new = cfgs[0]["config_hash"]
        assert st.count(new) == 2  # unpruned clean on both backends
        assert all(u["n_bins"] == 10 for u in st.units(new))
        assert st.count() == N_UNITS + 2
    # the report now shows the latest study and names the other
    from prunecal.eval.report import build_report

    paths = build_report(study)
    assert "Other studies in this store" in paths["md"].read_text()
    paths = build_report(study, config_hash=cfgs[1]["config_hash"][:8])
    assert cfgs[1]["config_hash"] in paths["md"].read_text().splitlines()[0]


def test_report_without_store(tmp_path):
    from prunecal.eval.cli import report_run

    assert report_run([str(tmp_path)]) == 2


def _fake_cifar10c(folder: Path, n: int, *, shuffle_labels: bool = False) -> np.ndarray:
    """An official-layout CIFAR-10-C folder built from the first ``n`` shipped test images:
    ``fog.npy`` (5n, 32, 32, 3) with severity k = images + 25 k, and ``labels.npy``."""
    from prunecal.data import load_cifar10

    x, y = load_cifar10(C.DEFAULT_DATA, limit=n)
    folder.mkdir()
    sev = [np.clip(x.astype(np.int16) + 25 * k, 0, 255).astype(np.uint8) for k in range(1, 6)]
    np.save(folder / "fog.npy", np.concatenate(sev))
    labels = np.tile(y, 5)
    if shuffle_labels:
        labels = (labels + 1) % 10
    np.save(folder / "labels.npy", labels)
    return np.concatenate(sev)


def test_official_cifar10c_files(tmp_path, capsys):
    from prunecal.data import to_tensor
    from prunecal.models import create, spec

    c10c = tmp_path / "c10c"
    imgs = _fake_cifar10c(c10c, 30)
    out = tmp_path / "o"
    args = ["--out", str(out), "--limit", "30", "--methods", "global_magnitude", "--sparsities", "0",
            "--cifar10c", str(c10c), "--corruptions", "all", "--severities", "1,5",
            "--sparse-backend", "dense", "--n-bootstrap", "0", "--quiet", "--keep-logits", "--no-report"]
    assert run(args) == 0
    with Store(out / "results.sqlite") as st:
        units = {(u["corruption"], u["severity"]): u for u in st.units()}
        (cfg,) = st.configs()
    assert set(units) == {("clean", 0), ("fog", 1), ("fog", 5)}  # "all" = the files present
    assert cfg["config"]["cifar10c"] == str(c10c)
    # the fog/5 unit evaluated exactly the official rows of its evaluation images
    u = units[("fog", 5)]
    z = np.load(out / u["logits_path"])
    s = spec("resnet20")
    net = create("resnet20", weights=str(C.DEFAULT_WEIGHTS)).eval()
    import torch

    with torch.inference_mode():
        ref = net(to_tensor(imgs[4 * 30:][z["index"]], s.mean, s.std)).numpy()
    np.testing.assert_array_equal(ref.argmax(1), z["logits"].argmax(1))
    np.testing.assert_allclose(ref, z["logits"], atol=1e-3)
    # explicit names must exist; labels must line up with --data
    assert run(args[:-1] + ["--corruptions", "snow"]) == 2
    assert "lacks snow.npy" in capsys.readouterr().err
    bad = tmp_path / "bad"
    _fake_cifar10c(bad, 30, shuffle_labels=True)
    assert run([str(bad) if a == str(c10c) else a for a in args]) == 2
    assert "labels do not match" in capsys.readouterr().err


def test_report_list_and_bad_hash(study, capsys):
    from prunecal.eval.cli import report_run

    assert report_run([str(study), "--list"]) == 0
    out = capsys.readouterr().out
    with Store(study / "results.sqlite") as st:
        assert all(c["config_hash"] in out for c in st.configs())
    assert report_run([str(study), "--config-hash", "nohash"]) == 2
    assert "matches 0 studies" in capsys.readouterr().err


def _prepared(tmp_path: Path, extra: list[str]):
    from prunecal.eval.cli import build_parser, config_from_args
    from prunecal.eval.sweep import Sweep, prepare

    args = ARGS + ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")] + extra
    cfg = C.resolve(config_from_args(build_parser().parse_args(args)))
    return prepare(cfg), Sweep(cfg, store=None)


def test_generated_corruptions_keyed_by_test_index(tmp_path):
    """The corrupted images a sweep evaluates are the rows (at the evaluation images' test-set
    indices) of corrupting the whole loaded test set, i.e. of `python -m prunecal.corruptions`;
    so two sweeps over different subsets corrupt a shared image identically."""
    from prunecal.corruptions import corrupt
    from prunecal.corruptions.export import write_cifar10c
    from prunecal.data import load_cifar10

    x, y = load_cifar10(C.DEFAULT_DATA, limit=40)
    c10c = tmp_path / "c10c"
    write_cifar10c(x, y, c10c, ["gaussian_noise"], seed=0)
    exported = np.load(c10c / "gaussian_noise.npy")[4 * 40:]  # severity 5
    np.testing.assert_array_equal(exported, corrupt(x, "gaussian_noise", 5, seed=0))

    pa, sa = _prepared(tmp_path, [])  # first 40 images, 8 for calibration
    pb, sb = _prepared(tmp_path, ["--limit", "30", "--calib-fraction", "0.5"])
    ia_, ib_ = pa.evaluation(0)[2], pb.evaluation(0)[2]
    assert not np.array_equal(ia_, np.arange(len(ia_)))
    for p, s, idx in ((pa, sa, ia_), (pb, sb, ib_)):
        imgs, labels = s._images(p, 0, "gaussian_noise", 5)
        np.testing.assert_array_equal(p.evaluation(0)[0], x[idx])
        np.testing.assert_array_equal(imgs, exported[idx])
        np.testing.assert_array_equal(labels, y[idx])
    # both subsets share images (same cache folder): each gets the same corruption in both
    common, ia, ib = np.intersect1d(ia_, ib_, return_indices=True)
    assert len(common) >= 5 and (ia != ib).any()  # shared images sit at different positions
    np.testing.assert_array_equal(sa._images(pa, 0, "gaussian_noise", 5)[0][ia],
                                  sb._images(pb, 0, "gaussian_noise", 5)[0][ib])
    # another seed evaluates other images, each still its own test-index row
    pd_, sd_ = _prepared(tmp_path, ["--seeds", "0,3"])
    i3 = pd_.evaluation(3)[2]
    assert not np.array_equal(i3, ia_)
    np.testing.assert_array_equal(sd_._images(pd_, 3, "gaussian_noise", 5)[0], exported[i3])
    # a fresh sweep over the first subset is served from the cache, still the same rows
    pc_, sc = _prepared(tmp_path, [])
    np.testing.assert_array_equal(sc._images(pc_, 0, "gaussian_noise", 5)[0], exported[ia_])
    # the config hash names the index keying (units of older, position-keyed sweeps are not reused)
    assert pa.config_hash != C.results_hash(pa.cfg, weights_sha256=pa.weights_sha256,
                                            data_fingerprint=pa.data_fingerprint,
                                            corruption_source="generated")


def test_stored_corrupted_unit_used_test_index_rows(study):
    """A stored gaussian_noise/5 unit's logits are those of the exported rows of its images."""
    import torch

    from prunecal.corruptions import corrupt
    from prunecal.data import load_cifar10, to_tensor
    from prunecal.models import create, spec

    with Store(study / "results.sqlite") as st:
        u = [u for u in st.units() if u["corruption"] == "gaussian_noise" and u["severity"] == 5
             and u["method"] == BASELINE][0]
    z = np.load(study / u["logits_path"])
    x, _ = load_cifar10(C.DEFAULT_DATA, limit=40)
    rows = corrupt(x, "gaussian_noise", 5, seed=u["seed"])[z["index"]]
    s = spec("resnet20")
    net = create("resnet20", weights=str(C.DEFAULT_WEIGHTS)).eval()
    with torch.inference_mode():
        ref = net(to_tensor(rows, s.mean, s.std)).numpy()
    np.testing.assert_array_equal(ref.argmax(1), z["logits"].argmax(1))
    np.testing.assert_allclose(ref, z["logits"], atol=1e-3)
