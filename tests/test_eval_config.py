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


# -- one schema for config keys and flags: types strictly, ranges, the key named ------------
@pytest.mark.parametrize("key,value,match", [
    ("threads", "two", r"^threads must be an integer, got a string \('two'\)"),
    ("batch_size", 1.5, r"^batch_size must be an integer, got a number \(1\.5\)"),
    ("threads", True, r"^threads must be an integer, got a boolean"),
    ("n_bootstrap", "x", r"^n_bootstrap must be an integer"),
    ("n_bootstrap", -1, r"^n_bootstrap must be an integer between 0 and"),
    ("keep_logits", "false", r"^keep_logits must be true or false"),
    ("quiet", "no", r"^quiet must be true or false"),
    ("quiet", 1, r"^quiet must be true or false"),
    ("finetune_augment", "yes", r"^finetune_augment must be true or false"),
    ("seed", -1, r"^seed must be an integer between 0 and 4294967295, got -1"),
    ("seeds", [0, -1], r"^seeds must be integers between 0 and"),
    ("seeds", [0, 1.5], r"^seeds: cannot parse"),
    ("corruption_seed", 2**40, r"^corruption_seed must be"),
    ("threads", 10_000, r"^threads must be an integer between 1 and \d+ \(at most 4x"),
    ("finetune_lr", float("nan"), r"^finetune_lr must be a finite number > 0"),
    ("finetune_lr", "0.1", r"^finetune_lr must be a number, got a string"),
    ("finetune_weight_decay", float("inf"), r"^finetune_weight_decay must be"),
    ("sparsities", [0, True], r"^sparsities: cannot parse"),
    ("severities", True, r"^severities: expected"),
    ("severities", [1, 2.5], r"^severities: list items"),
    ("methods", [1, 2], r"^methods must be names"),
    ("methods", 3, r"^methods must be a list"),
    ("model", 3, r"^model must be a string"),
    ("out", "", r"^out must not be empty"),
    ("data", ["a"], r"^data must be a string"),
    ("limit", "100", r"^limit must be an integer, got a string"),
    ("corruptions", 5, r"^corruptions must be a keyword or a list"),
    ("finetune_schedule", "linear", r"^finetune_schedule must be one of constant, cosine"),
    ("n-bins", 0, r"^n-bins must be an integer between 1"),  # named as written
])
def test_config_values_checked_strictly(key, value, match):
    with pytest.raises(C.ConfigError, match=match) as ei:
        C.config_from_mapping({key: value})
    assert "\n" not in str(ei.value)


def test_config_file_types_from_toml_and_yaml(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('keep_logits = "false"\n')
    with pytest.raises(C.ConfigError, match="keep_logits must be true or false"):
        C.config_from_mapping(C.load_config_file(f))
    f.write_text("keep_logits = false\nquiet = true\nthreads = 1\nfinetune_lr = 1\nseed = 3\n")
    cfg = C.config_from_mapping(C.load_config_file(f))
    assert (cfg.keep_logits, cfg.quiet, cfg.threads, cfg.finetune_lr, cfg.seeds) == (
        False, True, 1, 1.0, (3,))
    assert isinstance(cfg.finetune_lr, float)
    y = tmp_path / "s.yaml"
    y.write_text('quiet: "no"\n')
    with pytest.raises(C.ConfigError, match="quiet must be true or false"):
        C.config_from_mapping(C.load_config_file(y))


@pytest.mark.parametrize("flags,match", [
    (["--threads", "two"], r"^--threads must be an integer, got 'two'"),
    (["--threads", "1000"], r"^--threads must be an integer between 1 and \d+"),
    (["--n-bootstrap", "-1"], r"^--n-bootstrap must be an integer between 0"),
    (["--seed", "-1"], r"^--seed must be an integer between 0 and 4294967295, got -1"),
    (["--seeds", "0,-2"], r"^--seeds must be integers between 0"),
    (["--batch-size", "1.5"], r"^--batch-size must be an integer, got '1.5'"),
    (["--finetune-augment", "maybe"], r"^--finetune-augment must be true or false"),
    (["--calib-fraction", "nan"], r"^--calib-fraction must lie in \[0, 1\)"),
    (["--binning", "x"], r"^--binning must be one of width, mass"),
])
def test_flags_use_the_same_schema(flags, match):
    args = build_parser().parse_args(["--out", "x", *flags])
    with pytest.raises(C.ConfigError, match=match):
        config_from_args(args)


def test_flag_text_parsed_by_type():
    args = build_parser().parse_args(["--out", "x", "--threads", "1", "--finetune-lr", "0.01",
                                      "--finetune-augment", "false", "--keep-logits", "--seed", "7",
                                      "--sparsities", "0,0.5", "--limit", "10"])
    cfg = config_from_args(args)
    assert (cfg.threads, cfg.finetune_lr, cfg.finetune_augment, cfg.keep_logits, cfg.seeds,
            cfg.sparsities, cfg.limit) == (1, 0.01, False, True, (7,), (0.0, 0.5), 10)


def test_threads_limit_follows_the_cpu_count(monkeypatch):
    monkeypatch.setattr(C.os, "cpu_count", lambda: 2)
    assert C.max_threads() == 8
    C.config_from_mapping({"threads": 8})
    with pytest.raises(C.ConfigError, match="at most 4x the 2 CPUs"):
        C.config_from_mapping({"threads": 9})
    monkeypatch.setattr(C.os, "cpu_count", lambda: 512)
    assert C.max_threads() == 256


def test_validate_checks_fields_set_from_python():
    with pytest.raises(C.ConfigError, match="^keep_logits must be true or false"):
        C.validate(dataclasses.replace(C.DEFAULTS, keep_logits="false"))
    with pytest.raises(C.ConfigError, match="^batch_size must be an integer"):
        C.validate(dataclasses.replace(C.DEFAULTS, batch_size=2.5))
    C.validate(C.DEFAULTS)


def test_schema_covers_every_field():
    assert set(C.SCHEMA) == {f.name for f in dataclasses.fields(C.StudyConfig)}


def test_output_paths(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(C.ConfigError, match="^out: .*file is an existing file, not a folder"):
        C.check_output_paths(dataclasses.replace(C.DEFAULTS, out=str(f)))
    with pytest.raises(C.ConfigError, match="^cache_dir: cannot create folder .*file is a file"):
        C.check_output_paths(dataclasses.replace(C.DEFAULTS, out=str(tmp_path / "o"),
                                                 cache_dir=str(f / "c")))
    with pytest.raises(C.ConfigError, match="^out: cannot create folder"):
        C.check_output_paths(dataclasses.replace(C.DEFAULTS, out=str(f / "o")))
    C.check_output_paths(dataclasses.replace(C.DEFAULTS, out=str(tmp_path / "a" / "b")))
    assert not (tmp_path / "a").exists()
