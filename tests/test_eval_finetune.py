"""The seed study's protocol in the sweep: prune -> fine-tune (masks fixed) -> evaluate, over seeds.

Data made here from the shipped 500 original-pixel test images: images 0..299 are the
fine-tuning set (``x_train``), images 300..499 the evaluated set (``x_test``), so no evaluated
image is trained on.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prunecal.eval import config as C
from prunecal.eval.cli import run
from prunecal.eval.store import Store

from _eval_data import write_split


@pytest.fixture(scope="module")
def split_npz(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("data") / "split.npz", slice(0, 300), slice(300, 500))


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--finetune-data", str(data), "--methods", "global_magnitude",
            "--sparsities", "0,0.7", "--corruptions", "none", "--sparse-backend", "dense",
            "--finetune-lr", "0.01", "--finetune-batch-size", "32", "--n-bootstrap", "0",
            "--threads", "1", "--quiet", "--no-report", "--out", str(out), *extra]


def _clean_rows(out: Path) -> dict[tuple, dict]:
    with Store(out / "results.sqlite") as st:
        return {(u["method"], u["sparsity"], u["seed"], u["finetune_epochs"]): u
                for u in st.units() if u["corruption"] == "clean"}


@pytest.fixture(scope="module")
def study(split_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "out"
    assert run(_args(split_npz, out, "--finetune-epochs", "0,2", "--seeds", "0,1")) == 0
    return out


def test_finetuned_beside_one_shot_over_seeds(study):
    rows = _clean_rows(study)
    # unpruned once per seed (never fine-tuned); the pruned net one-shot and fine-tuned per seed
    assert set(rows) == {("none", 0.0, 0, 0), ("none", 0.0, 1, 0),
                         ("global_magnitude", 0.7, 0, 0), ("global_magnitude", 0.7, 1, 0),
                         ("global_magnitude", 0.7, 0, 2), ("global_magnitude", 0.7, 1, 2)}
    for seed in (0, 1):
        one_shot = rows[("global_magnitude", 0.7, seed, 0)]
        tuned = rows[("global_magnitude", 0.7, seed, 2)]
        assert one_shot["finetune_recipe"] == "none" and one_shot["finetune_json"] is None
        assert tuned["finetune_recipe"].startswith("ft-")
        ft = tuned["finetune_json"]
        assert ft["recipe"]["lr"] == 0.01 and ft["recipe"]["epochs"] == 2
        assert ft["recipe"]["n_images"] == 300 and len(ft["history"]["loss"]) == 2
        # fine-tuning recovers what one-shot pruning lost (measured: about +10 points)
        assert tuned["accuracy"] > one_shot["accuracy"] + 0.04, (seed, tuned["accuracy"],
                                                                  one_shot["accuracy"])
    # seeds split calibration / evaluation differently: different evaluated images
    assert rows[("none", 0.0, 0, 0)]["accuracy"] != rows[("none", 0.0, 1, 0)]["accuracy"]


def test_pruned_zeros_stay_zero_after_finetuning(study):
    from prunecal.eval.cache import ArtefactCache
    from prunecal.models import create

    cache = ArtefactCache(study / "cache")
    build = lambda: create("resnet20")  # noqa: E731
    pruned = sorted((study / "cache" / "pruned").glob("*.pt"))
    tuned = sorted((study / "cache" / "finetune").glob("*_e2.pt"))
    assert len(pruned) == 2 and len(tuned) == 2
    by_seed = {}
    for p in pruned:
        m, meta, _ = cache.load_model(p, build)
        by_seed[meta["seed"]] = m
    for p in tuned:
        m, meta, opt = cache.load_model(p, build)
        assert opt is not None  # the optimizer state travels with each epoch's checkpoint
        ref = None
        for cand in by_seed.values():  # the pruned parent: same zero pattern in the first conv
            w0 = dict(cand.named_modules())["layer1.0.conv1"].weight
            if torch.equal(w0 == 0, dict(m.named_modules())["layer1.0.conv1"].weight == 0):
                ref = cand
        assert ref is not None
        changed = 0
        for (name, a), (_, b) in zip(ref.named_modules(), m.named_modules()):
            if isinstance(a, (torch.nn.Conv2d, torch.nn.Linear)):
                zero = a.weight == 0
                assert bool((b.weight[zero] == 0).all()), name  # a pruned zero stays exactly zero
                changed += int((a.weight[~zero] != b.weight[~zero]).sum())
        assert changed > 1000  # and the kept weights were trained


def test_report_and_csv_show_finetuning(study):
    from prunecal.eval.report import build_report

    paths = build_report(study)
    md = Path(paths["md"]).read_text()
    assert "fine-tuned 2 ep" in md and "±" in md
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {"finetune_epochs", "finetune_recipe", "seed"} <= set(rows[0])
    assert {r["finetune_epochs"] for r in rows} == {"0", "2"}


def test_more_epochs_continue_the_same_chain(study, split_npz, caplog):
    """A constant-LR run of 3 epochs starts from the 2-epoch checkpoint; nothing else re-runs."""
    import logging

    before = _clean_rows(study)
    with caplog.at_level(logging.INFO, logger="prunecal.eval"):
        assert run(_args(split_npz, study, "--finetune-epochs", "0,2,3", "--seeds", "0")) == 0
    assert "resuming at epoch 2 of 3" in caplog.text
    after = _clean_rows(study)
    assert set(after) - set(before) == {("global_magnitude", 0.7, 0, 3)}
    for k in before:
        assert after[k]["finished_at"] == before[k]["finished_at"]  # not re-evaluated
    # the 2-epoch artefacts (a requested length) are kept; the chain's newest is epoch 3
    assert len(list((study / "cache" / "finetune").glob("*_e2.pt"))) == 2
    assert len(list((study / "cache" / "finetune").glob("*_e3.pt"))) == 1


def test_sigkill_during_finetuning_resumes_from_last_epoch(split_npz, tmp_path):
    """Kill the run while it fine-tunes; the re-run resumes from the last finished epoch and
    stores exactly the numbers of an uninterrupted run."""
    args = lambda out: _args(split_npz, out, "--finetune-epochs", "4", "--sparsities", "0.7")  # noqa: E731
    ref = tmp_path / "ref"
    assert run(args(ref)) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prunecal.eval.cli", *args(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    ft = out / "cache" / "finetune"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        done = sorted(ft.glob("*_e[0-9].pt")) if ft.is_dir() else []  # (published after its manifest)
        if done:
            killed_at = done[-1].name
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    err = proc.stderr.read() if proc.stderr else ""
    assert killed_at is not None and "_e4." not in killed_at, f"the run ended before the kill: {err}"
    assert not (out / "results.sqlite").exists() or not _clean_rows(out)
    res = subprocess.run([sys.executable, "-m", "prunecal.eval.cli", *args(out)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resuming at epoch" in res.stderr and "of 4" in res.stderr
    got, want = _clean_rows(out), _clean_rows(ref)
    assert set(got) == set(want) == {("global_magnitude", 0.7, 0, 4)}
    for k in want:
        for col in ("accuracy", "ece", "ece_ts", "nll", "nll_ts", "temperature"):
            assert got[k][col] == pytest.approx(want[k][col], rel=1e-5, abs=1e-6), col
        for col in ("metrics_json", "metrics_ts_json"):  # every metric, raw and after temperature
            assert set(got[k][col]) == set(want[k][col]), col
            for name, value in want[k][col].items():
                if isinstance(value, str):
                    assert got[k][col][name] == value, (col, name)
                else:
                    assert got[k][col][name] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (col, name)
        assert got[k]["finetune_json"]["history"]["loss"] == pytest.approx(
            want[k]["finetune_json"]["history"]["loss"], rel=1e-5)


@pytest.mark.parametrize("extra, needle", [
    (["--finetune-epochs", "-1"], r"finetune[-_]epochs"),
    (["--finetune-epochs", "2", "--finetune-data", "/nonexistent/train.npz"], "finetune_data not found"),
    (["--finetune-epochs", "x"], r"finetune[-_]epochs"),
    (["--finetune-lr", "0"], r"finetune[-_]lr"),
    (["--finetune-schedule", "linear"], r"finetune[-_]schedule"),
])
def test_bad_finetune_settings_are_one_line(split_npz, tmp_path, capsys, extra, needle):
    import re

    try:
        code = run(_args(split_npz, tmp_path / "o", *extra))
    except SystemExit as e:  # an argparse-level rejection
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.search(needle, err), err
    assert not (tmp_path / "o" / "results.sqlite").exists()


def test_finetune_data_required(split_npz, tmp_path, capsys):
    args = [a for a in _args(split_npz, tmp_path / "o", "--finetune-epochs", "2")]
    i = args.index("--finetune-data")
    del args[i:i + 2]
    assert run(args) == 2
    assert "finetune_data is required" in capsys.readouterr().err


def test_train_set_of_another_size_or_class_count(tmp_path, split_npz, capsys):
    small = tmp_path / "small.npz"
    np.savez(small, x_train=np.zeros((8, 16, 16, 3), np.uint8), y_train=np.zeros(8, np.int64))
    many = tmp_path / "many.npz"
    np.savez(many, x_train=np.zeros((8, 32, 32, 3), np.uint8), y_train=np.arange(8) + 5)
    for path, needle in ((small, "16, 16, 3)"), (many, "0..9")):
        args = _args(split_npz, tmp_path / "o", "--finetune-epochs", "1")
        args[args.index("--finetune-data") + 1] = str(path)
        assert run(args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and str(path) in err and len(err.splitlines()) == 1


def test_slimming_shrinks_bn_scales_before_bn_channel(split_npz, tmp_path):
    """The sparsity-training stage adds slimming_l1 * sum|gamma| to the loss: the BN scales it
    leaves are smaller than after the same training without the penalty."""
    from prunecal.eval.cache import ArtefactCache
    from prunecal.eval.stages import Recipe, StageContext
    from prunecal.models import spec
    from prunecal.train import train

    z = np.load(split_npz)
    cfg = C.resolve(C.config_from_mapping(dict(
        data=str(split_npz), finetune_data=str(split_npz), methods=["bn_channel"],
        slimming_l1=5e-3, slimming_epochs=1, finetune_lr=0.01, finetune_batch_size=32)))
    sp = spec("resnet20")
    ctx = StageContext(cfg, ArtefactCache(tmp_path), "w", sp.mean, sp.std, z["x_train"],
                       z["y_train"], Recipe.from_config(cfg, "fp", 300))
    slim = ctx.slimmed(0)
    plain = ctx.base_model(0)
    train(plain, z["x_train"], z["y_train"], epochs=1, lr=0.01, batch_size=32, mean=sp.mean,
          std=sp.std, seed=0, progress=False, schedule="constant")
    l1 = lambda m: sum(float(b.weight.abs().sum()) for b in m.modules()  # noqa: E731
                       if isinstance(b, torch.nn.BatchNorm2d))
    assert l1(slim) < l1(plain) - 0.5
    assert ctx.uses_slimming("bn_channel") and not ctx.uses_slimming("l1_filter")
    assert ctx.prune_key("bn_channel", 0.5, 0) != ctx.prune_key("l1_filter", 0.5, 0)
    # the pruned bn_channel network descends from the slimmed one (cached, not retrained)
    pruned = ctx.pruned("bn_channel", 0.5, 0)
    assert len(list((tmp_path / "slim").glob("*.pt"))) == 1 and pruned is not None


def test_sparse_kernel_finetuning_matches_masked_torch(split_npz, tmp_path, native):
    """--finetune-backend csr trains through prunecal.sparse.trainable: the same losses and
    accuracy as masked dense torch up to float rounding, and the zeros stay zero."""
    outs = {}
    for backend in ("torch", "csr"):
        out = tmp_path / backend
        assert run(_args(split_npz, out, "--finetune-epochs", "2", "--sparsities", "0.9",
                         "--finetune-backend", backend)) == 0
        outs[backend] = _clean_rows(out)[("global_magnitude", 0.9, 0, 2)]
    t, c = outs["torch"], outs["csr"]
    assert t["finetune_json"]["recipe"]["backend"] == "torch"
    assert c["finetune_json"]["recipe"]["backend"] == "csr"
    lc, lt = c["finetune_json"]["history"]["loss"], t["finetune_json"]["history"]["loss"]
    assert lc[0] == pytest.approx(lt[0], rel=1e-3)  # rounding differences grow with the steps
    assert lc[1] == pytest.approx(lt[1], rel=2e-2)
    assert abs(c["accuracy"] - t["accuracy"]) <= 0.02
    assert c["sparsity_achieved"] == pytest.approx(t["sparsity_achieved"], abs=1e-9)
