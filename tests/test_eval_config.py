"""prunecal.eval.config: parsing, file loading, overrides, resolution and the results hash."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecal.eval import config as C
from prunecal.eval.cli import build_parser, config_from_args
from prunecal.registry import UnknownNameError


@given(st.sets(st.integers(1, 5), min_size=1))
@settings(max_examples=30, deadline=None)
def test_severities_list_roundtrip(sevs):
    text = ",".join(map(str, sorted(sevs, reverse=True)))
    assert C.parse_severities(text) == tuple(sorted(sevs))


@pytest.mark.parametrize("spec,expected", [("1-5", (1, 2, 3, 4, 5)), ("2-3,5", (2, 3, 5)), (3, (3,)),
                                           ([1, 4], (1, 4))])
def test_severities_forms(spec, expected):
    assert C.parse_severities(spec) == expected


@pytest.mark.parametrize("bad", ["0-5", "6", "a", "1-x", ""])
def test_severities_bad(bad):
    with pytest.raises(C.ConfigError, match="severit"):
        C.parse_severities(bad)


def test_mapping_overlay_and_unknown_key():
    cfg = C.config_from_mapping({"methods": "random, l1_filter", "sparsities": [0, 0.5], "n-bins": 10})
    assert cfg.methods == ("random", "l1_filter")
    assert cfg.sparsities == (0.0, 0.5)
    assert cfg.n_bins == 10
    assert cfg.threads == C.DEFAULTS.threads
    with pytest.raises(C.ConfigError, match="unknown setting 'bogus'"):
        C.config_from_mapping({"bogus": 1})


@pytest.mark.parametrize("field,value,match", [("sparsities", "0,1.0", "sparsities"),
                                               ("threads", 0, "threads"), ("calib_fraction", 1.0, "calib"),
                                               ("n_bins", 0, "n_bins"), ("binning", "foo", "binning"),
                                               ("limit", 1, "limit"), ("sparsities", "x", "sparsities")])
def test_validation(field, value, match):
    with pytest.raises(C.ConfigError, match=match):
        C.config_from_mapping({field: value})


def test_toml_and_yaml_files_and_flag_override(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('[study]\nmodel = "resnet32"\nmethods = ["random"]\nseverities = "1-2"\nthreads = 1\n')
    yaml = tmp_path / "s.yaml"
    yaml.write_text("model: resnet32\nmethods: [random]\nseverities: '1-2'\nthreads: 1\n")
    for f in (toml, yaml):
        args = build_parser().parse_args(["--config", str(f), "--threads", "2", "--out", "x"])
        cfg = config_from_args(args)
        assert (cfg.model, cfg.methods, cfg.severities, cfg.threads, cfg.out) == (
            "resnet32", ("random",), (1, 2), 2, "x")


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        C.load_config_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("model = [unclosed\n")
    with pytest.raises(C.ConfigError, match="cannot parse config file"):
        C.load_config_file(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(C.ConfigError, match="table of settings"):
        C.load_config_file(lst)


def test_example_config_parses():
    from pathlib import Path

    f = Path(__file__).resolve().parents[1] / "examples" / "study.toml"
    cfg = C.config_from_mapping(C.load_config_file(f))
    assert cfg.model and cfg.methods


def test_resolve_defaults_and_unknown_names():
    cfg = C.resolve(C.DEFAULTS)
    assert cfg.weights == str(C.DEFAULT_WEIGHTS) and cfg.data == str(C.DEFAULT_DATA)
    from prunecal import corruptions

    assert cfg.corruptions == tuple(corruptions.BENCHMARK)
    full = C.resolve(dataclasses.replace(C.DEFAULTS, corruptions="all")).corruptions
    assert len(full) == 19 and set(corruptions.EXTRA) <= set(full)
    assert C.resolve(dataclasses.replace(C.DEFAULTS, corruptions="none")).corruptions == ()
    for field, value, what in (("model", "nonet", "model"), ("methods", ("nomethod",), "method"),
                               ("corruptions", ("nocorr",), "corruption"),
                               ("sparse_backend", ("nob",), "backend")):
        with pytest.raises(UnknownNameError, match=f"unknown .*{what}.*available"):
            C.resolve(dataclasses.replace(C.DEFAULTS, **{field: value}))


def test_results_hash_tracks_result_fields_only():
    kw = dict(weights_sha256="w", data_fingerprint="d", corruption_source="generated")
    h = C.results_hash(C.DEFAULTS, **kw)
    assert h == C.results_hash(dataclasses.replace(C.DEFAULTS, threads=1, batch_size=7, quiet=True,
                                                   methods=("random",), out="elsewhere"), **kw)
    # seeds and fine-tuning lengths are unit-key columns, the recipe is keyed per unit
    assert h == C.results_hash(dataclasses.replace(C.DEFAULTS, seeds=(0, 1), finetune_epochs=(0, 5),
                                                   finetune_lr=0.01), **kw)
    for change in (dict(n_bins=10), dict(corruption_seed=1), dict(calib_fraction=0.3),
                   dict(limit=100), dict(model="resnet32"), dict(binning="mass"),
                   dict(slimming_l1=1e-4), dict(slimming_epochs=3)):
        assert C.results_hash(dataclasses.replace(C.DEFAULTS, **change), **kw) != h, change
    for k in kw:
        assert C.results_hash(C.DEFAULTS, **{**kw, k: "other"}) != h, k


def test_to_toml_roundtrip(tmp_path):
    cfg = C.config_from_mapping({"methods": "random", "limit": 50})
    f = tmp_path / "r.toml"
    f.write_text(C.to_toml(cfg))
    again = C.config_from_mapping(C.load_config_file(f))
    assert again == cfg


def test_backends_without_native_core(monkeypatch):
    monkeypatch.setattr(C, "native_available", lambda: False)
    assert C.resolve(C.DEFAULTS).sparse_backend == ("dense",)  # the default falls back
    with pytest.raises(C.ConfigError, match="'csr' needs the native core"):
        C.resolve(dataclasses.replace(C.DEFAULTS, sparse_backend=("dense", "csr")))
    assert C.resolve(dataclasses.replace(C.DEFAULTS, sparse_backend=("torch",))).sparse_backend == ("torch",)
