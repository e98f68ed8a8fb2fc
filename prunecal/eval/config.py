"""Study configuration: one dataclass, loaded from TOML/YAML, overridden by flags, resolved and hashed.

Resolution order (later wins): :data:`DEFAULTS` < config file (``--config``) < command-line flags.
``resolve`` turns the names into concrete values (``corruptions = "all"`` -> the list, the shipped
assets for an unset model/weights/data) and ``results_hash`` hashes only the fields that change
results, so a changed study starts new units in the store instead of mixing results.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_WEIGHTS = ASSETS / "resnet20-12fca82f.th"
"""Shipped pretrained CIFAR-10 ResNet-20 (akamaster, BSD-2-Clause)."""
DEFAULT_DATA = ASSETS / "cifar10_test500.npz"
"""Shipped first 500 original-pixel CIFAR-10 test images."""

RESULTS_VERSION = 1
"""Bumped when the evaluation itself changes meaning; part of :func:`results_hash`."""


class ConfigError(ValueError):
    """A bad configuration value or file; the message names the setting."""


@dataclass
class StudyConfig:
    """All settings of one study. Every field has a default; see ``prunecal-eval --help``.

    Sequences are stored as tuples; ``corruptions`` may be ``"all"``, ``"benchmark"``,
    ``"extra"``, ``"none"`` or a list of names; ``sparse_backend`` is a list whose FIRST
    entry evaluates every unit and whose other entries evaluate the clean units only
    (their speed and a prediction-equivalence check).
    """

    model: str = "resnet20"
    weights: str | None = None  # None: the shipped ResNet-20 for resnet20, random init otherwise
    data: str | None = None  # None: the shipped 500 original-pixel test images
    split: str = "test"
    cifar10c: str | None = None  # official CIFAR-10-C folder; None: generate corruptions
    methods: tuple[str, ...] = ("global_magnitude", "l1_filter", "bn_channel")
    # Post hoc, without fine-tuning, the structured methods leave ResNet-20 near chance beyond
    # ~0.5 (l1_filter 0.2: ~78 %, bn_channel 0.2: ~48 %), so the default grid stays low; 3 points
    # keep the default study within a few minutes on 2 cores.
    sparsities: tuple[float, ...] = (0.0, 0.2, 0.6)
    corruptions: str | tuple[str, ...] = "benchmark"
    severities: tuple[int, ...] = (1, 3, 5)
    # csr runs every unit (through the native plan: faster than dense even unpruned); dense runs
    # the clean units as the speed baseline and the prediction-equivalence reference.
    sparse_backend: tuple[str, ...] = ("csr", "dense")  # without prunecal._C: ("dense",)
    threads: int = 2
    batch_size: int = 256
    # every seeded stage (random pruning, slimming, fine-tuning order and augmentation, the
    # calibration split, bootstrap) runs once per seed; the report shows mean +- std over seeds
    seeds: tuple[int, ...] = (0,)
    corruption_seed: int = 0  # generated corruptions keep their own seed (same images for every seed)
    # the seed study's protocol: prune -> fine-tune (masks fixed) -> evaluate; 0 = one-shot
    finetune_epochs: tuple[int, ...] = (0,)
    finetune_data: str | None = None  # any layout load_cifar10(path, finetune_split) accepts
    finetune_split: str = "train"
    finetune_limit: int | None = None  # first N training images (default: all)
    finetune_lr: float = 0.001  # the paper's fine-tuning LR
    finetune_batch_size: int = 128
    finetune_momentum: float = 0.9
    finetune_weight_decay: float = 5e-4
    finetune_schedule: str = "constant"  # constant | cosine (cosine: keyed by its total epochs)
    finetune_augment: bool = True  # random crop (pad 4) + horizontal flip
    finetune_backend: str = "auto"  # auto | torch | csr (sparse training kernels)
    slimming_l1: float = 0.0  # network slimming: L1 on BN scales before bn_channel (Liu et al.: 1e-4)
    slimming_epochs: int = 1  # epochs of that sparsity training (on finetune_data)
    n_bins: int = 15
    binning: str = "width"
    calib_fraction: float = 0.2
    n_bootstrap: int = 200
    keep_logits: bool = False
    limit: int | None = None
    cache_dir: str | None = None
    quiet: bool = False
    out: str = "runs/default"


DEFAULTS = StudyConfig()

# Fields that change the numbers in a unit row (beside the unit's own key columns).
_RESULT_FIELDS = (
    "model", "split", "corruption_seed", "n_bins", "binning", "calib_fraction", "n_bootstrap",
    "limit", "slimming_l1", "slimming_epochs",
)
_TUPLE_FIELDS = {"methods": str, "sparsities": float, "severities": int, "sparse_backend": str,
                 "seeds": int, "finetune_epochs": int}
FINETUNE_SCHEDULES = ("constant", "cosine")
FINETUNE_BACKENDS = ("auto", "torch", "csr")


def _split_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return [str(value)]


def parse_severities(value: Any) -> tuple[int, ...]:
    """``"1-5"``, ``"1,3,5"``, ``3`` or ``[1, 2]`` -> sorted unique ints in 1..5."""
    out: set[int] = set()
    items = [value] if isinstance(value, int) else _split_list(value)
    for item in items:
        s = str(item)
        try:
            if "-" in s:
                lo, hi = (int(p) for p in s.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(s))
        except ValueError:
            raise ConfigError(f"severities: cannot parse {s!r} (use e.g. '1-5' or '1,3,5')") from None
    if not out or min(out) < 1 or max(out) > 5:
        raise ConfigError(f"severities must lie in 1..5, got {sorted(out)}")
    return tuple(sorted(out))


def _coerce(name: str, value: Any) -> Any:
    if name == "severities":
        return parse_severities(value)
    if name in _TUPLE_FIELDS:
        typ = _TUPLE_FIELDS[name]
        try:
            vals = tuple(typ(v) for v in _split_list(value))
        except ValueError:
            raise ConfigError(f"{name}: cannot parse {value!r} as a list of {typ.__name__}") from None
        if not vals:
            raise ConfigError(f"{name} must not be empty")
        return tuple(dict.fromkeys(vals))
    if name == "corruptions":
        vals = _split_list(value)
        if len(vals) == 1 and vals[0] in ("all", "benchmark", "extra", "none"):
            return vals[0]
        return tuple(dict.fromkeys(vals))
    return value


def config_from_mapping(data: Mapping[str, Any], base: StudyConfig | None = None) -> StudyConfig:
    """Overlay ``data`` (keys = field names, ``-`` or ``_``) on ``base``; unknown keys raise."""
    cfg = dataclasses.replace(base or DEFAULTS)
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "seed":  # one seed: the older spelling of seeds
            name, value = "seeds", value if value is None or isinstance(value, (list, tuple)) else [value]
        if name not in names:
            raise ConfigError(f"unknown setting {key!r}; valid: {', '.join(sorted(names))}")
        if value is None:
            continue
        setattr(cfg, name, _coerce(name, value))
    validate(cfg)
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file of settings: top-level keys, or
    the ``[study]`` table when there is one (``out/config.resolved.toml`` can be fed back)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p} (accepted: .toml, .yaml, .yml)")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text()) or {}
        else:
            data = tomllib.loads(p.read_text())
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError
        raise ConfigError(f"cannot parse config file {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a table of settings")
    if "study" in data and isinstance(data["study"], dict):
        data = data["study"]  # other tables (e.g. [provenance] of a resolved config) are notes
    return data


def validate(cfg: StudyConfig) -> None:
    """Range checks that need no registry; raises :class:`ConfigError`."""
    for s in cfg.sparsities:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sparsities must lie in [0, 1), got {s}")
    if cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {cfg.threads}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {cfg.n_bins}")
    if not 0.0 <= cfg.calib_fraction < 1.0:
        raise ConfigError(f"calib_fraction must lie in [0, 1), got {cfg.calib_fraction}")
    if cfg.limit is not None and cfg.limit < 2:
        raise ConfigError(f"limit must be >= 2 images, got {cfg.limit}")
    if cfg.binning not in ("width", "mass"):
        raise ConfigError(f"binning must be 'width' or 'mass', got {cfg.binning!r}")
    for s in cfg.seeds:
        if s < 0:
            raise ConfigError(f"seeds must be non-negative integers, got {s}")
    if cfg.corruption_seed < 0:
        raise ConfigError(f"corruption_seed must be a non-negative integer, got {cfg.corruption_seed}")
    for e in cfg.finetune_epochs:
        if e < 0:
            raise ConfigError(f"finetune_epochs must be integers >= 0, got {e}")
    if not (cfg.finetune_lr > 0 and cfg.finetune_lr < float("inf")):
        raise ConfigError(f"finetune_lr must be a finite number > 0, got {cfg.finetune_lr}")
    if cfg.finetune_batch_size < 1:
        raise ConfigError(f"finetune_batch_size must be >= 1, got {cfg.finetune_batch_size}")
    if not 0.0 <= cfg.finetune_momentum < 1.0:
        raise ConfigError(f"finetune_momentum must lie in [0, 1), got {cfg.finetune_momentum}")
    if cfg.finetune_weight_decay < 0:
        raise ConfigError(f"finetune_weight_decay must be >= 0, got {cfg.finetune_weight_decay}")
    if cfg.finetune_limit is not None and cfg.finetune_limit < 1:
        raise ConfigError(f"finetune_limit must be >= 1 image, got {cfg.finetune_limit}")
    if cfg.finetune_schedule not in FINETUNE_SCHEDULES:
        raise ConfigError(f"finetune_schedule must be one of {', '.join(FINETUNE_SCHEDULES)}, "
                          f"got {cfg.finetune_schedule!r}")
    if cfg.finetune_backend not in FINETUNE_BACKENDS:
        raise ConfigError(f"finetune_backend must be one of {', '.join(FINETUNE_BACKENDS)}, "
                          f"got {cfg.finetune_backend!r}")
    if cfg.slimming_l1 < 0:
        raise ConfigError(f"slimming_l1 must be >= 0, got {cfg.slimming_l1}")
    if cfg.slimming_epochs < 1:
        raise ConfigError(f"slimming_epochs must be >= 1, got {cfg.slimming_epochs}")
    needs_train = any(e > 0 for e in cfg.finetune_epochs) or (
        cfg.slimming_l1 > 0 and "bn_channel" in cfg.methods)
    if needs_train and cfg.finetune_data is None:
        raise ConfigError("finetune_data is required when finetune_epochs has a value > 0 or "
                          "slimming_l1 > 0 (a CIFAR-10 training set: e.g. train_jpeg.npz or an npz "
                          "with x_train/y_train)")


def corruption_names(spec: str | Sequence[str]) -> list[str]:
    """Resolve ``"all" | "benchmark" | "extra" | "none"`` or names (checked by the registry)."""
    from prunecal import corruptions as C

    if isinstance(spec, str):
        if spec == "none":
            return []
        if spec == "all":
            return list(C.BENCHMARK) + [n for n in C.EXTRA if n not in C.BENCHMARK]
        if spec == "benchmark":
            return list(C.BENCHMARK)
        if spec == "extra":
            return list(C.EXTRA)
        spec = [spec]
    for name in spec:
        C.CORRUPTIONS.get(name)  # UnknownNameError lists the valid names
    return list(spec)


def resolve(cfg: StudyConfig) -> StudyConfig:
    """Concrete paths and names: shipped assets for unset weights/data, corruption list expanded,
    model / method / backend names checked against their registries."""
    from prunecal import models, prune

    cfg = dataclasses.replace(cfg)
    models.MODELS.get(cfg.model)
    for m in cfg.methods:
        prune.METHODS.get(m)
    if cfg.weights is None and cfg.model == "resnet20":
        cfg.weights = str(DEFAULT_WEIGHTS)
    if cfg.data is None:
        cfg.data = str(DEFAULT_DATA)
    # absolute paths, so the resolved config stays valid from any working directory
    for name in ("weights", "data", "cifar10c", "cache_dir", "finetune_data"):
        if getattr(cfg, name) is not None:
            setattr(cfg, name, os.path.abspath(os.path.expanduser(getattr(cfg, name))))
    if cfg.cifar10c is None:
        cfg.corruptions = tuple(corruption_names(cfg.corruptions))
    else:
        cfg.corruptions = tuple(_cifar10c_names(cfg.corruptions, cfg.cifar10c))
    from prunecal.sparse import BACKENDS

    for b in cfg.sparse_backend:
        if b not in BACKENDS:
            from prunecal.registry import UnknownNameError

            raise UnknownNameError(f"unknown sparse backend {b!r}; available: {', '.join(BACKENDS)}")
    if not native_available():
        native = [b for b in cfg.sparse_backend if b in ("csr", "bsr")]
        if native and cfg.sparse_backend == DEFAULTS.sparse_backend:
            cfg.sparse_backend = tuple(b for b in cfg.sparse_backend if b not in native) or ("dense",)
        elif native:
            raise ConfigError(f"sparse backend {native[0]!r} needs the native core prunecal._C, which "
                              "is not built (scripts/dev_build.sh or pip install .); use dense or torch")
    return cfg


def native_available() -> bool:
    """Whether the native kernels (``prunecal._C``) of the csr / bsr backends import."""
    try:
        import prunecal._C  # noqa: F401
    except ImportError:
        return False
    return True


def _cifar10c_names(spec: str | Sequence[str], folder: str) -> list[str]:
    """Corruptions to read from an official CIFAR-10-C folder: a keyword selects those of its
    list present in the folder; explicit names must all be present (FileNotFoundError lists them)."""
    from prunecal.data.cifar10c import (BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS,
                                        available_corruptions)

    present = available_corruptions(folder)
    if isinstance(spec, str) and spec in ("all", "benchmark", "extra", "none"):
        wanted = {"all": BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS, "benchmark": BENCHMARK_CORRUPTIONS,
                  "extra": EXTRA_CORRUPTIONS, "none": ()}[spec]
        names = [n for n in wanted if n in present]
        if spec != "none" and not names:
            raise FileNotFoundError(f"no {spec} CIFAR-10-C corruption file in {folder} "
                                    f"(present: {', '.join(present) or 'none'})")
        return names
    names = [spec] if isinstance(spec, str) else list(spec)
    missing = [n for n in names if n not in present]
    if missing:
        raise FileNotFoundError(f"CIFAR-10-C folder {folder} lacks {', '.join(missing)}.npy "
                                f"(present: {', '.join(present) or 'none'})")
    return names


def to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """Plain JSON/TOML-friendly dict (tuples -> lists, None kept)."""
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def to_toml(cfg: StudyConfig) -> str:
    """TOML text of the config (``None`` values written as comments: TOML has no null)."""
    lines = ["# resolved prunecal-eval configuration", "[study]"]
    for k, v in to_dict(cfg).items():
        if v is None:
            lines.append(f"# {k} = (unset)")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def results_hash(cfg: StudyConfig, *, weights_sha256: str, data_fingerprint: str,
                 corruption_source: str) -> str:
    """16-hex-digit hash of everything, beside the unit key, that changes a unit's numbers."""
    payload = {k: getattr(cfg, k) for k in _RESULT_FIELDS}
    payload.update(weights_sha256=weights_sha256, data=data_fingerprint,
                   corruption_source=corruption_source, version=RESULTS_VERSION)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = [
    "StudyConfig", "DEFAULTS", "ConfigError", "DEFAULT_WEIGHTS", "DEFAULT_DATA",
    "config_from_mapping", "load_config_file", "validate", "resolve", "corruption_names",
    "parse_severities", "to_dict", "to_toml", "results_hash", "RESULTS_VERSION",
]
