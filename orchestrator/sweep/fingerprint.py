"""A cell's fingerprint: the hash of everything that determines its result, and the parts it is made of.

Resume skips a cell only when MLflow holds a FINISHED run of it with the same fingerprint. Its parts
(`fingerprint_parts`) are named inputs: the candidate grid, the trainer (head methods only: L-BFGS
reads none of it), the protocol (select_on, k, refits), the search settings that change what is
searched (not how many run at once), the features (each unit's key; for fine-tuning, which images
and weights it starts from, not how features were stored), a digest of each module whose code decides
a number (`sea`, the trial, the features and split code, fine-tuning), grid mode's successive halving
(`search.halving`, its min_epochs resolved; absent when off), the carve's fraction and seed
by value, the library versions, and for a fine-tuning cell its backbone's recipe as resolved (name and every
key: `finetune.recipe.*`, so a changed recipe default, family or override never reuses a stale result).
Each run records its parts as a JSON tag, so that a later plan can say which inputs changed
(`seabench status`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.extract import backbone_parts
from orchestrator.finetune_config import RECIPE_KEYS
from orchestrator.sweep.cells import Cell, candidate_configs, reference_config
from orchestrator.sweep.features import unit_id

# 2: parts named and recorded; the protocol, the trial/features/split code, the carve and the libraries
# keyed; scheduling-only search keys and logreg's unused trainer dropped; fine-tuning keyed by its images
FINGERPRINT_VERSION = 2
# torch and numpy compute every number; torchvision and Pillow decode and transform fine-tuning's images
LIBRARIES = ("torch", "numpy", "torchvision", "Pillow")
# modules whose code decides a number, by import name: split code for every cell, the rest by method
SPLIT_CODE = {"splits": "tasks.splits", "datasets": "tasks.datasets"}
HEAD_CODE = {"trial": "orchestrator.sweep.trial", "features": "orchestrator.sweep.features"}
SEARCH_CODE = {"search": "orchestrator.sweep.search"}   # search mode's trainable and refit
FINETUNE_SEA_CODE = {"metrics": "sea.metrics"}          # fine-tuning scores with sea's metrics, nothing else of sea
# how many trials or cells run at once: Ray's scheduling, not an input of any number
SEARCH_SCHEDULING = ("max_concurrent", "max_concurrent_cells")
# how often a head trial checkpoints: a resumed cell ends bitwise equal to an uninterrupted one
TRAINER_SCHEDULING = ("checkpoint_every",)
# where checkpoints go, retries, CPU threads and which cells fine-tune: none of them changes a cell's numbers
FINETUNE_OPERATIONAL = ("storage", "max_failures", "cpus_per_worker", "backbones", "tasks", "keep", "save_weights")
# the recipe keys as configured (for every backbone, per backbone): a cell is keyed by its backbone's resolved recipe
RECIPE_SECTION = ("recipe", "recipes", *RECIPE_KEYS)
# how stored features were written: a fine-tuning cell trains on the images, never on the features
STORAGE_ONLY = ("dtype", "compute", "format_version")
SHORT = 24    # a part's value up to this many characters is recorded as it is, a longer one as a digest


def _digest_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@functools.cache
def sea_version() -> str:
    """`sea`'s version plus a digest of its source files: any change to the method's code counts."""
    import sea

    return f"{getattr(sea, '__version__', '0')}+{_digest_files(Path(sea.__file__).parent.glob('*.py'))}"


@functools.cache
def finetune_version() -> str:
    """A digest of orchestrator/finetune's source files: a change to the fine-tuning loop counts."""
    return _digest_files((Path(__file__).parents[1] / "finetune").glob("*.py"))


def method_code(method: str) -> dict[str, str]:
    """A registered (plugin) method's own code: the source file of its augment function, by digest; empty for
    a built-in method (its code is `sea`'s, in code.sea) and for a plugin head without augmentation."""
    from sea.methods import BUILT_IN, get_method

    if method in BUILT_IN:
        return {}
    augment = get_method(method).augmenter()
    source = inspect.getsourcefile(augment) if augment is not None else None
    return {"code.method": _digest_files([Path(source)])} if source else {}


@functools.cache
def module_digest(module: str) -> str:
    """A digest of one module's source file (found without importing it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"fingerprint: module {module!r} has no source file to digest")
    return _digest_files([Path(spec.origin)])


@functools.cache
def library_versions() -> dict[str, str]:
    """The installed version of each library in LIBRARIES ("absent" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def stored_splits(task: str) -> tuple[str, ...]:
    from tasks import get_task

    return get_task(task).stored_splits


def cell_units(cell: Cell) -> list[str]:
    """The unit ids (backbone|task|split) a cell reads: every part of its backbone, every stored split."""
    return [unit_id(part, cell.task, split) for part in backbone_parts(cell.backbone)
            for split in stored_splits(cell.task)]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=list)


def _unit_part(unit: str) -> str:
    """"backbone|split" of a unit id: the cell names its task already."""
    backbone, rest = unit.split("|", 1)
    return f"{backbone}|{rest.rsplit('|', 1)[1]}"


def image_identity(metadata: Mapping[str, Any]) -> str:
    """What a unit's FeatureKey metadata says about its images, labels, split and backbone weights, less
    how its features were stored (dtype, compute): the input of a fine-tuning cell."""
    kept = {k: v for k, v in metadata.items() if k not in STORAGE_ONLY}
    return hashlib.sha256(_canonical(kept).encode()).hexdigest()[:24]


def image_identities(store_uri: str, keys: Mapping[str, str]) -> dict[str, str]:
    """Unit id -> image_identity of the unit with that key, read from its manifest in the store (units
    not in the store are left out: their cells' parts say "")."""
    from orchestrator.errors import OrchestratorError
    from orchestrator.extract import FeatureStore

    store = FeatureStore(store_uri)
    out = {}
    for unit, key in keys.items():
        backbone, rest = unit.split("|", 1)
        try:
            out[unit] = image_identity(store.manifest_of(backbone, *rest.rsplit("|", 1), key).metadata)
        except OrchestratorError:
            continue
    return out


def _prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in values.items()}


def fingerprint_parts(cfg: SweepConfig, cell: Cell, keys: Mapping[str, str],
                      images: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Component name -> the value that enters `cell`'s fingerprint under `cfg`, reading the units whose
    keys are `keys` (and, for a fine-tuning cell, whose image identities are `images`)."""
    import tasks.splits
    from sea.curves import default_k
    from sea.halving import default_min_epochs
    from tasks import get_task

    spec = get_task(cell.task)
    select = cfg.mode == "select"
    parts: dict[str, Any] = {
        "version": FINGERPRINT_VERSION, "cell": cell.cell_id, "mode": cfg.mode, "metric": spec.metric,
        "candidates": candidate_configs(cfg, cell.method) if select else reference_config(cell.method),
        **_prefixed("lib", library_versions()),
        **_prefixed("code", {name: module_digest(module) for name, module in SPLIT_CODE.items()}),
    }
    if select and spec.val_rule == "carve":   # read at call time: the carve's own constants, by value
        parts.update({"carve.fraction": tasks.splits.VAL_FRACTION, "carve.seed": tasks.splits.VAL_SEED})
    units = cell_units(cell)
    if cell.method == "finetune":   # images, not features, are trained on: its recipe, its code, its images
        from orchestrator.finetune import backbone_recipe

        section = {k: v for k, v in cfg.to_dict()["finetune"].items()
                   if k not in (*FINETUNE_OPERATIONAL, *RECIPE_SECTION)}
        parts.update(_prefixed("finetune", section))
        recipe = backbone_recipe(cfg.finetune, cell.backbone)
        parts.update({"candidates": recipe.candidates(), **_prefixed("finetune.recipe", recipe.as_dict())})
        parts.update({"code.finetune": finetune_version(),
                      **_prefixed("code", {n: module_digest(m) for n, m in FINETUNE_SEA_CODE.items()})})
        parts.update({f"images.{_unit_part(u)}": (images or {}).get(u, "") for u in units})
        return parts
    parts.update(method_code(cell.method))
    parts.update({"accelerated": cfg.resources.gpu > 0, "code.sea": sea_version(),
                  **_prefixed("code", {name: module_digest(module) for name, module in HEAD_CODE.items()}),
                  **{f"features.{_unit_part(u)}": keys.get(u, "") for u in units}})
    if cell.method == "logreg":   # L-BFGS reads only the device of the trainer settings (`accelerated`)
        return parts
    parts.update(_prefixed("trainer", {k: v for k, v in cfg.to_dict()["trainer"].items() if k not in TRAINER_SCHEDULING}))
    if select:
        k = cfg.protocol.k if cfg.protocol.k is not None else default_k(cfg.trainer.epochs)   # explicit = default
        parts.update(_prefixed("protocol", {**cfg.to_dict()["protocol"], "k": k}))
    halving = cfg.search.halving
    if select and halving is not None:   # a halved grid cell is another result; absent when off (keys unchanged)
        first = halving.min_epochs or default_min_epochs(len(parts["candidates"]), cfg.trainer.epochs, halving.factor)
        parts.update({"search.halving.factor": halving.factor, "search.halving.min_epochs": first})
    if select and cfg.search.algorithm != "grid":   # halving is grid mode's only (keyed above)
        search = {k: v for k, v in cfg.to_dict()["search"].items() if k not in (*SEARCH_SCHEDULING, "halving")}
        parts.update({**_prefixed("search", search),
                      **_prefixed("code", {n: module_digest(m) for n, m in SEARCH_CODE.items()})})
    return parts


def short_value(value: Any) -> Any:
    """How a part is recorded: a number, bool, null or short string as it is, anything else as a 12-hex digest."""
    if value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= SHORT):
        return value
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:12]


class Fingerprint(str):
    """A cell's fingerprint: the 24-hex digest itself (what MLflow tags and cells.json hold), carrying the
    short form of its parts (component -> value or 12-hex digest) to record beside it."""

    parts: dict[str, Any]

    def __new__(cls, digest: str, parts: Mapping[str, Any] | None = None) -> Fingerprint:
        made = super().__new__(cls, digest)
        made.parts = dict(parts or {})   # pickle rebuilds a str subclass from the string, then sets its state
        return made


def cell_fingerprint(cfg: SweepConfig, cell: Cell, keys: Mapping[str, str],
                     images: Mapping[str, str] | None = None) -> Fingerprint:
    """The fingerprint of `cell` under `cfg`, reading the units whose keys are `keys`; a fine-tuning
    cell's image identities are `images`, or read from the store's manifests of those keys."""
    if images is None and cell.method == "finetune":
        images = image_identities(cfg.store, {u: keys[u] for u in cell_units(cell) if u in keys})
    parts = fingerprint_parts(cfg, cell, keys, images)
    digest = hashlib.sha256(_canonical(parts).encode()).hexdigest()[:24]
    return Fingerprint(digest, {name: short_value(value) for name, value in parts.items()})


def cell_fingerprints(cfg: SweepConfig, cells: Iterable[Cell], keys: Mapping[str, str],
                      images: Mapping[str, str] | None = None) -> dict[str, Fingerprint]:
    """cell_id -> fingerprint of every cell; fine-tuning cells' image identities read once for all."""
    cells = list(cells)
    if images is None and any(c.method == "finetune" for c in cells):
        wanted = {u for c in cells if c.method == "finetune" for u in cell_units(c)}
        images = image_identities(cfg.store, {u: k for u, k in keys.items() if u in wanted})
    return {c.cell_id: cell_fingerprint(cfg, c, keys, images or {}) for c in cells}


def parts_tag(fingerprint: str) -> str:
    """The `fingerprint_parts` tag of a run: compact JSON of the parts ("" for a fingerprint without them)."""
    parts = getattr(fingerprint, "parts", None)
    return json.dumps(parts, sort_keys=True, separators=(",", ":")) if parts else ""


def changed_parts(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Component -> (old, new) for every component that differs (None where one side lacks it)."""
    return {name: (old.get(name), new.get(name)) for name in sorted({*old, *new}) if old.get(name) != new.get(name)}


def current_keys(store_uri: str, cells: Iterable[Cell]) -> dict[str, str]:
    """Unit id -> the key the store's pointer names now, for units that have one (a sweep run without
    an extraction in front of it, e.g. on a store filled by `seabench extract`)."""
    from orchestrator.errors import OrchestratorError
    from orchestrator.extract import FeatureStore

    store = FeatureStore(store_uri)
    keys: dict[str, str] = {}
    for cell in cells:
        for unit in cell_units(cell):
            if unit in keys:
                continue
            try:
                backbone, rest = unit.split("|", 1)
                keys[unit] = store.key_for(backbone, *rest.rsplit("|", 1))
            except OrchestratorError:
                continue  # not extracted: the cell fails with the store's message, and its fingerprint says ""
    return keys


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:16]
