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
    executor: str = "local"  # local (this process) | ray (Ray tasks: pip install 'prunecal[ray]')
    ray_address: str | None = None  # None: start a local Ray; "auto": join the running cluster
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
EXECUTORS = ("local", "ray")


def _split_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return [str(value)]


def parse_severities(value: Any, *, label: str = "severities") -> tuple[int, ...]:
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
            raise ConfigError(f"{label}: cannot parse {s!r} (use e.g. '1-5' or '1,3,5')") from None
    if not out or min(out) < 1 or max(out) > 5:
        raise ConfigError(f"{label} must lie in 1..5, got {sorted(out)}")
    return tuple(sorted(out))


# -- the one schema of every setting (config keys and flags) ---------------------------------
MAX_SEED = 2**32 - 1  # numpy's seeding range
_BIG = 2**31 - 1


def max_threads() -> int:
    """The most ``threads`` a study may ask for: 4x this machine's CPUs, at most 256 (more
    threads than cores only slow the native kernels down)."""
    return max(1, min(256, 4 * (os.cpu_count() or 1)))


@dataclass(frozen=True)
class Setting:
    """Type and range of one setting. ``kind``: int, float, bool, str, path, choice, ints,
    floats, strs, severities, corruptions; ``optional``: None allowed (unset)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    hi_open: bool = False  # hi excluded
    lo_open: bool = False  # lo excluded
    optional: bool = False
    choices: tuple[str, ...] = ()
    hint: str = ""


SCHEMA: dict[str, Setting] = {
    "model": Setting("str"),
    "weights": Setting("path", optional=True),
    "data": Setting("path", optional=True),
    "split": Setting("str"),
    "cifar10c": Setting("path", optional=True),
    "methods": Setting("strs"),
    "sparsities": Setting("floats", 0.0, 1.0, hi_open=True),
    "corruptions": Setting("corruptions"),
    "severities": Setting("severities", 1, 5),
    "sparse_backend": Setting("strs"),
    "threads": Setting("int", 1, None),  # upper bound: max_threads()
    "batch_size": Setting("int", 1, 1 << 20),
    "seeds": Setting("ints", 0, MAX_SEED),
    "corruption_seed": Setting("int", 0, MAX_SEED),
    "finetune_epochs": Setting("ints", 0, 100_000),
    "finetune_data": Setting("path", optional=True),
    "finetune_split": Setting("str"),
    "finetune_limit": Setting("int", 1, _BIG, optional=True, hint="image"),
    "finetune_lr": Setting("float", 0.0, None, lo_open=True),
    "finetune_batch_size": Setting("int", 1, 1 << 20),
    "finetune_momentum": Setting("float", 0.0, 1.0, hi_open=True),
    "finetune_weight_decay": Setting("float", 0.0, None),
    "finetune_schedule": Setting("choice", choices=FINETUNE_SCHEDULES),
    "finetune_augment": Setting("bool"),
    "finetune_backend": Setting("choice", choices=FINETUNE_BACKENDS),
    "slimming_l1": Setting("float", 0.0, None),
    "slimming_epochs": Setting("int", 1, 100_000),
    "executor": Setting("choice", choices=EXECUTORS),
    "ray_address": Setting("str", optional=True),
    "n_bins": Setting("int", 1, 100_000),
    "binning": Setting("choice", choices=("width", "mass")),
    "calib_fraction": Setting("float", 0.0, 1.0, hi_open=True),
    "n_bootstrap": Setting("int", 0, 1_000_000),
    "keep_logits": Setting("bool"),
    "limit": Setting("int", 2, _BIG, optional=True, hint="images"),
    "cache_dir": Setting("path", optional=True),
    "quiet": Setting("bool"),
    "out": Setting("path"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e18 else repr(float(v))


def _bounds_text(st: Setting, name: str) -> str:
    hi = max_threads() if name == "threads" else st.hi
    if hi is not None and hi >= _BIG and st.kind in ("int", "ints") and st.lo is not None and hi != MAX_SEED:
        hi = None  # an int bound only there to keep values in range: ">= lo"
    if st.lo is not None and hi is not None:
        if st.kind in ("int", "ints"):
            return f"between {_num(st.lo)} and {_num(hi)}"
        return f"in {'(' if st.lo_open else '['}{_num(st.lo)}, {_num(hi)}{')' if st.hi_open else ']'}"
    if st.lo is not None:
        return f"{'>' if st.lo_open else '>='} {_num(st.lo)}"
    return ""


def _check_range(label: str, name: str, st: Setting, v: float) -> None:
    hi = max_threads() if name == "threads" else st.hi
    bad = (v != v or v in (float("inf"), float("-inf"))
           or (st.lo is not None and (v <= st.lo if st.lo_open else v < st.lo))
           or (hi is not None and (v >= hi if st.hi_open else v > hi)))
    if not bad:
        return
    what = {"int": "an integer", "ints": "integers", "float": "a finite number",
            "floats": "finite numbers", "severities": "integers"}.get(st.kind, "a value")
    got = _num(v) if v == v and abs(v) != float("inf") else repr(v)
    if name == "threads":
        raise ConfigError(f"{label} must be {what} {_bounds_text(st, name)} (at most 4x the "
                          f"{os.cpu_count() or 1} CPUs of this machine, and 256), got {got}")
    if name in ("sparsities", "calib_fraction", "finetune_momentum"):
        raise ConfigError(f"{label} must lie in [{_num(st.lo)}, {_num(st.hi)}), got {got}")
    if name == "severities":
        raise ConfigError(f"{label} must lie in 1..5, got {got}")
    if st.hint:
        raise ConfigError(f"{label} must be {_bounds_text(st, name)} {st.hint}, got {got}")
    raise ConfigError(f"{label} must be {what} {_bounds_text(st, name)}, got {got}")


def _typename(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def _scalar(label: str, name: str, st: Setting, v: Any, text: bool) -> Any:
    """One value of kind int / float (from a file: its own type; from a flag: text)."""
    kind = st.kind.rstrip("s") if st.kind in ("ints", "floats") else st.kind
    if kind == "int":
        if text and isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise ConfigError(f"{label} must be an integer, got {v!r}") from None
        if not _is_int(v):
            raise ConfigError(f"{label} must be an integer, got {_typename(v)} ({v!r})")
    else:
        if text and isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise ConfigError(f"{label} must be a number, got {v!r}") from None
        if not _is_number(v):
            raise ConfigError(f"{label} must be a number, got {_typename(v)} ({v!r})")
        v = float(v)
    _check_range(label, name, st, v)
    return v


def check_setting(name: str, value: Any, *, label: str | None = None, text: bool = False) -> Any:
    """Check one setting against :data:`SCHEMA` and return its value as the config holds it.

    ``text=True`` for values typed on the command line (strings parsed by the setting's type);
    otherwise (config files, Python) values must already have the right type: ``threads = "two"``,
    ``batch_size = 1.5``, ``threads = true`` or ``keep_logits = "false"`` raise. Booleans are
    strict (``true`` / ``false`` only). Raises :class:`ConfigError` naming ``label`` (default:
    the setting's name).
    """
    st = SCHEMA[name]
    label = label or name
    if value is None:
        if st.optional:
            return None
        raise ConfigError(f"{label} must be set")
    k = st.kind
    if k in ("int", "float"):
        return _scalar(label, name, st, value, text)
    if k == "bool":
        if text and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false (a boolean), got {_typename(value)} "
                              f"({value!r})")
        return value
    if k in ("str", "path", "choice"):
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string, got {_typename(value)} ({value!r})")
        if not value.strip():
            raise ConfigError(f"{label} must not be empty")
        if "\0" in value:
            raise ConfigError(f"{label} must not contain a NUL character")
        if k == "choice" and value not in st.choices:
            raise ConfigError(f"{label} must be one of {', '.join(st.choices)}, got {value!r}")
        return value
    if k == "severities":
        if isinstance(value, bool) or not isinstance(value, (int, str, list, tuple)):
            raise ConfigError(f"{label}: expected e.g. '1-5', '1,3,5' or a list of integers, got "
                              f"{_typename(value)} ({value!r})")
        if isinstance(value, (list, tuple)) and any(isinstance(x, bool) or not isinstance(x, (int, str))
                                                    for x in value):
            raise ConfigError(f"{label}: list items must be integers 1..5, got {list(value)!r}")
        return parse_severities(value, label=label)
    if k == "corruptions":
        if isinstance(value, str):
            vals = _split_list(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
            vals = [x.strip() for x in value]
        else:
            raise ConfigError(f"{label} must be a keyword or a list of names, got {_typename(value)} "
                              f"({value!r})")
        if len(vals) == 1 and vals[0] in ("all", "benchmark", "extra", "none"):
            return vals[0]
        if not vals:
            raise ConfigError(f"{label} must not be empty (use 'none' for clean data only)")
        return tuple(dict.fromkeys(vals))
    # lists: ints / floats / strs, from a list or a comma-separated string
    if isinstance(value, str):
        items: list[Any] = _split_list(value)
        item_text = True
    elif isinstance(value, (list, tuple)):
        items, item_text = list(value), text
    elif k != "strs" and (_is_number(value)):
        items, item_text = [value], text
    else:
        raise ConfigError(f"{label} must be a list or a comma-separated string, got "
                          f"{_typename(value)} ({value!r})")
    if not items:
        raise ConfigError(f"{label} must not be empty")
    if k == "strs":
        bad = [x for x in items if not isinstance(x, str) or not x.strip()]
        if bad:
            raise ConfigError(f"{label} must be names (strings), got {bad[0]!r}")
        out = [x.strip() for x in items]
    else:
        out = []
        for x in items:
            try:
                out.append(_scalar(label, name, st, x, item_text))
            except ConfigError as exc:
                if "must be an integer" in str(exc) or "must be a number" in str(exc):
                    raise ConfigError(f"{label}: cannot parse {value!r} as a list of "
                                      f"{'int' if k == 'ints' else 'float'} ({x!r})") from None
                raise
    return tuple(dict.fromkeys(out))


def _coerce(name: str, value: Any, *, label: str | None = None, text: bool = False) -> Any:
    return check_setting(name, value, label=label, text=text)


def config_from_mapping(data: Mapping[str, Any], base: StudyConfig | None = None, *,
                        text: bool = False, flags: bool = False) -> StudyConfig:
    """Overlay ``data`` (keys = field names, ``-`` or ``_``) on ``base``; unknown keys raise.

    Every value is checked against :data:`SCHEMA` (type and range, see :func:`check_setting`)
    before anything else happens; an error names the key as given (``--key`` with
    ``flags=True``). ``text=True``: values are command-line strings.
    """
    cfg = dataclasses.replace(base or DEFAULTS)
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"setting names must be strings, got {key!r}")
        name = key.replace("-", "_")
        label = "--" + name.replace("_", "-") if flags else key
        if name == "seed":  # one seed: the older spelling of seeds
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                name = "seeds"
            else:
                seed = check_setting("corruption_seed", value, label=label, text=text)
                setattr(cfg, "seeds", (seed,))
                continue
        if name not in names:
            raise ConfigError(f"unknown setting {key!r}; valid: {', '.join(sorted(names))}")
        if value is None:
            continue
        setattr(cfg, name, check_setting(name, value, label=label, text=text))
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
    """Every field against :data:`SCHEMA` (type and range) and the checks across fields; raises
    :class:`ConfigError` naming the setting. Needs no registry (names are checked by
    :func:`resolve`)."""
    for name in SCHEMA:
        value = getattr(cfg, name)
        if isinstance(value, tuple) and SCHEMA[name].kind in ("ints", "floats", "strs", "severities"):
            value = list(value)
        check_setting(name, value)
    needs_train = any(e > 0 for e in cfg.finetune_epochs) or (
        cfg.slimming_l1 > 0 and "bn_channel" in cfg.methods)
    if needs_train and cfg.finetune_data is None:
        raise ConfigError("finetune_data is required when finetune_epochs has a value > 0 or "
                          "slimming_l1 > 0 (a CIFAR-10 training set: e.g. train_jpeg.npz or an npz "
                          "with x_train/y_train)")


def check_output_paths(cfg: StudyConfig) -> None:
    """``out`` and ``cache_dir`` must be (or be creatable as) folders: an existing file at either,
    or a file among their parents, raises :class:`ConfigError` before anything is written."""
    out = Path(os.path.expanduser(cfg.out))
    paths = [("out", out), ("cache_dir", Path(os.path.expanduser(cfg.cache_dir)) if cfg.cache_dir
                            else out / "cache")]
    for name, p in paths:
        label = name if name == "out" or cfg.cache_dir else "out"
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{label}: {p} is an existing file, not a folder")
            continue
        for parent in p.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"{label}: cannot create folder {p}: {parent} is a file")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise ConfigError(f"{label}: cannot create folder {p}: {parent} is not writable")
                break


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
    if cfg.executor == "ray":
        from .ray_executor import import_ray

        import_ray()  # ConfigError saying how to install Ray, before anything is written
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
    "config_from_mapping", "load_config_file", "validate", "check_setting", "check_output_paths",
    "SCHEMA", "Setting", "max_threads", "resolve", "corruption_names",
    "parse_severities", "to_dict", "to_toml", "results_hash", "RESULTS_VERSION",
]
