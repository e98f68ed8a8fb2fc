"""Issue 16, the artefact cache (prunecal/eval/cache.py, stages.py) under attack and damage.

A shared ``--cache-dir`` is the attack path: each test copies the cache of a clean run, plants
or changes one artefact in it, and runs the same study into a fresh ``--out`` on that cache.

- a pickle planted at a cached model's path never runs (its payload would create a marker file),
  with no manifest and with a manifest that matches it (``torch.load(weights_only=True)``);
- one float changed inside a cached model, or a plausible ``{"temperature": 0.05}``, fails its
  digest: said in one log line, rebuilt, and the run's results equal the clean run's. The same
  change with a re-computed manifest does change the results (so the equality above is not
  luck: the tampered artefact was not used).
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from prunecal.eval.cache import ArtefactCache
from prunecal.eval.cli import run

STUDY = ["--limit", "40", "--methods", "global_magnitude", "--sparsities", "0,0.5", "--corruptions",
         "none", "--sparse-backend", "dense", "--batch-size", "8", "--n-bootstrap", "0",
         "--threads", "1", "--quiet", "--no-report"]
METRICS = ("accuracy", "ece", "ece_ts", "nll", "nll_ts", "temperature", "metrics_json")


def metrics(out: Path) -> dict:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        rows = con.execute(f"SELECT method, sparsity, corruption, backend, {', '.join(METRICS)} "
                           "FROM units").fetchall()
    finally:
        con.close()
    return {r[:4]: r[4:] for r in rows}


def study(out: Path, cache: Path) -> int:
    return run(["--out", str(out), "--cache-dir", str(cache), *STUDY])


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    assert study(root / "o", root / "cache") == 0
    m = metrics(root / "o")
    assert len(m) == 2
    return root / "cache", m


@pytest.fixture
def cache(clean, tmp_path):
    dst = tmp_path / "shared-cache"
    shutil.copytree(clean[0], dst)
    return dst


def model_artefact(cache: Path) -> Path:
    files = sorted((cache / "pruned").glob("*.pt"))
    assert len(files) == 1, files  # the pruned network (the unpruned one is the weights file)
    return files[0]


def write_manifest(path: Path) -> None:
    data = path.read_bytes()
    path.with_name(path.name + ".sha256").write_text(
        json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}))


class Payload:
    """Unpickling this creates ``marker``: proof that code from the cache ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code from the cache ran')",))


def plant_pickle(path: Path, marker: Path, form: str) -> None:
    if form == "torch.save":  # the zip format torch.load reads by default
        torch.save({"state_dict": Payload(marker), "prune_info": None, "meta": {}}, path)
    else:  # a bare (legacy) pickle
        with open(path, "wb") as f:
            pickle.dump({"state_dict": Payload(marker)}, f)


def test_payload_really_runs_when_unpickled(tmp_path):
    """The marker payload is live: plain unpickling (what weights_only=False did) runs it."""
    marker = tmp_path / "marker"
    p = tmp_path / "x.pt"
    plant_pickle(p, marker, "pickle")
    with open(p, "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_planted_pickle_without_manifest_never_runs_and_is_rebuilt(clean, cache, tmp_path, caplog, form):
    marker = tmp_path / "marker"
    path = model_artefact(cache)
    plant_pickle(path, marker, form)
    path.with_name(path.name + ".sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="prunecal.eval"):
        assert study(tmp_path / "o", cache) == 0
    assert not marker.exists()
    assert any(f"artefact {path} has no valid digest manifest: rebuilding it" == r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert metrics(tmp_path / "o") == clean[1]
    assert ArtefactCache(cache).check(path)  # rebuilt with its manifest


@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_planted_pickle_with_matching_manifest_never_runs(cache, tmp_path, form):
    marker = tmp_path / "marker"
    path = model_artefact(cache)
    plant_pickle(path, marker, form)
    write_manifest(path)
    assert ArtefactCache(cache).check(path)  # the manifest is no defence here: weights_only is
    try:
        study(tmp_path / "o", cache)
    except Exception:  # noqa: BLE001 - whatever the run does, the payload must not run
        pass
    assert not marker.exists()


def test_planted_pickle_with_matching_manifest_is_rebuilt(clean, cache, tmp_path):
    marker = tmp_path / "marker"
    path = model_artefact(cache)
    plant_pickle(path, marker, "torch.save")
    write_manifest(path)
    assert study(tmp_path / "o", cache) == 0
    assert not marker.exists()
    assert metrics(tmp_path / "o") == clean[1]


def change_one_float(path: Path) -> None:
    """Scale the largest weight of the first conv by 1000 and save the checkpoint again."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    sd = payload["state_dict"]
    name = next(k for k, v in sd.items() if k.endswith("weight") and v.dim() == 4)
    w = sd[name].view(-1)
    i = int(w.abs().argmax())
    w[i] = w[i] * 1000
    torch.save(payload, path)


def test_one_float_changed_in_cached_model_is_detected_and_rebuilt(clean, cache, tmp_path, caplog):
    path = model_artefact(cache)
    change_one_float(path)
    with caplog.at_level(logging.WARNING, logger="prunecal.eval"):
        assert study(tmp_path / "o", cache) == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"artefact {path} fails its digest check") and m.endswith("rebuilding it")
               and "\n" not in m for m in msgs), msgs
    assert metrics(tmp_path / "o") == clean[1]
    assert ArtefactCache(cache).check(path)


def test_one_changed_float_would_change_the_results(clean, cache, tmp_path):
    """Sensitivity of the test above: the same change, manifest re-computed, is used and moves
    the pruned network's numbers."""
    path = model_artefact(cache)
    change_one_float(path)
    write_manifest(path)
    assert study(tmp_path / "o", cache) == 0
    got = metrics(tmp_path / "o")
    pruned = [k for k in got if k[0] == "global_magnitude"]
    assert len(pruned) == 1 and got[pruned[0]] != clean[1][pruned[0]]


def plant_temperature(cache: Path, *, manifest: bool) -> list[Path]:
    files = sorted((cache / "temperature").glob("*.json"))
    assert len(files) == 2, files  # the unpruned and the pruned network
    for f in files:
        f.write_text(json.dumps({"temperature": 0.05}))
        if manifest:
            write_manifest(f)
    return files


def test_planted_temperature_is_detected_and_rebuilt(clean, cache, tmp_path, caplog):
    files = plant_temperature(cache, manifest=False)
    with caplog.at_level(logging.WARNING, logger="prunecal.eval"):
        assert study(tmp_path / "o", cache) == 0
    msgs = [r.getMessage() for r in caplog.records]
    for f in files:
        assert any(m.startswith(f"artefact {f} fails its digest check") for m in msgs), msgs
        assert ArtefactCache(cache).check(f)
        assert json.loads(f.read_text())["temperature"] != 0.05
    assert metrics(tmp_path / "o") == clean[1]


def test_planted_temperature_would_change_the_results(clean, cache, tmp_path):
    plant_temperature(cache, manifest=True)
    assert study(tmp_path / "o", cache) == 0
    got = metrics(tmp_path / "o")
    for k, v in got.items():
        assert v[METRICS.index("temperature")] == 0.05
        assert v[METRICS.index("nll_ts")] != clean[1][k][METRICS.index("nll_ts")]


def test_a_reader_never_sees_an_artefact_without_its_manifest(tmp_path, monkeypatch):
    """Two processes on one cache: whenever an artefact file becomes visible, a concurrent
    reader (another ArtefactCache on the same folder) finds it valid, so it never removes a
    half-published artefact (seen as a FileNotFoundError in the writer: a CI failure)."""
    import prunecal.eval.cache as cache_mod

    writer, reader = ArtefactCache(tmp_path), ArtefactCache(tmp_path)
    path = writer.path("finetune", "net_e1", suffix=".json")
    real = cache_mod.atomic_write
    seen = []

    def spy(p, write):
        out = real(p, write)
        if path.is_file():  # the artefact is visible: what does a reader conclude right now?
            seen.append(reader.check(path))
        return out

    monkeypatch.setattr(cache_mod, "atomic_write", spy)
    writer.put_json(path, {"temperature": 1.5})
    assert seen and all(seen) and reader.rebuilt == 0
    assert reader.get_json(path) == {"temperature": 1.5}
    model = torch.nn.Linear(3, 2)
    mpath = writer.path("models", "lin")
    seen.clear()
    path = mpath
    writer.save_model(mpath, model)
    assert seen and all(seen) and reader.rebuilt == 0
