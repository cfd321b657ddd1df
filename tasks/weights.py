"""A backbone's registry entry (`BackboneSpec`, registered by `tasks.backbones`), where its weights are and
how they get into its timm model, strictly and without pickle.

Weights sources (`BackboneSpec.weights`), one loader each in `WEIGHT_LOADERS`:
  "file:<path or URI>"                 a checkpoint; relative paths live under $SEABENCH_WEIGHTS
                                       (default ~/.cache/seabench/weights), which may itself be a URI
  "package:<module>:<attr.path>"       a file shipped in an installed package; the callable returns its path
  "timm:<tag>"                         timm's own pretrained weights for `<arch>.<tag>` (downloads)
  "random:<seed>"                      random init under a scoped seed (tests, smoke runs)
A weights file given as an fsspec URI (s3://, gs://, file://) is staged into the node-local cache
(`tasks.staging`) and checked against the spec's sha256 when it has one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from tasks.adapters import (
    adapt,
    load_strict,
    read_checkpoint,
    state_dict_sha256,
    unwrap_checkpoint,
)
from tasks.errors import TaskError
from tasks.staging import exists, file_sha256, is_uri, join, stage

WEIGHTS_ENV = "SEABENCH_WEIGHTS"
Loaded = tuple[torch.nn.Module, str, "str | None"]   # model, weights sha256, the file loaded (if any)


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry; hashable data only, so it can be logged and compared."""

    name: str
    arch: str                                  # timm architecture name
    weights: str                               # "timm:<tag>" | "file:<path>" | "package:<module>:<attr>" | "random:<seed>"
    adapter: str = "timm"                      # key of tasks.adapters.ADAPTERS
    feature: str = "pooled"                    # key of FEATURES: "pooled" (pre-logits) | "cls"
    input_size: int | None = None              # square input override (tiny resolutions for tests)
    model_kwargs: tuple[tuple[str, Any], ...] = ()      # extra timm.create_model kwargs
    source_url: str = ""                       # where the authors publish the weights
    sha256: str = ""                           # of the published file, when known; checked on load
    note: str = ""
    feature_dim: int = 0                       # known statically; 0 = measure at build time
    data_config: tuple[tuple[str, Any], ...] = ()       # overrides of timm's data config (authors' eval transform)


def weights_location() -> str | Path:
    """Where "file:" weights with relative paths live: $SEABENCH_WEIGHTS (a path or a URI) or
    ~/.cache/seabench/weights."""
    value = os.environ.get(WEIGHTS_ENV)
    if value and is_uri(value):
        return value
    return Path(value or Path.home() / ".cache" / "seabench" / "weights").expanduser()


def locate(spec: BackboneSpec) -> str | Path:
    """The weights file (local path or URI) a "file:" or "package:" source points at; not checked to exist."""
    scheme, _, ref = spec.weights.partition(":")
    if scheme == "file":
        if is_uri(ref):
            return ref
        path = Path(ref).expanduser()
        if path.is_absolute():
            return path
        if ".." in path.parts:  # relative names must stay inside the weights folder
            raise TaskError(f"backbone {spec.name!r}: relative weights path {ref!r} leaves ${WEIGHTS_ENV}; "
                            "use a plain file name or an absolute path")
        where = weights_location()
        return join(where, path.as_posix()) if isinstance(where, str) else where / path
    module_name, _, attr_path = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
        return Path(target())
    except (ImportError, AttributeError, TypeError) as err:
        raise TaskError(f"backbone {spec.name!r}: cannot get its weights file from package source "
                        f"{spec.weights!r} ({err}); install it, see {spec.source_url}") from err


def missing_weights(spec: BackboneSpec) -> str | None:
    """Where the spec's weights file should be when it is absent (None when present or not a file source).

    Cheap: an absent package is found by importlib.util.find_spec (an installed one is imported to ask
    it for its file: those packages are a path and a file), a URI costs one fsspec exists()."""
    scheme, _, ref = spec.weights.partition(":")
    if scheme == "package":
        module = ref.partition(":")[0]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"the installed package providing module {module!r}"
    elif scheme != "file":
        return None  # random: needs nothing; timm: downloads into timm's cache on first build
    where = locate(spec)
    present = exists(where) if isinstance(where, str) else Path(where).is_file()
    return None if present else str(where)


def _checked_file(path: Path, spec: BackboneSpec, user_given: bool = False) -> Path:
    if not path.exists():
        hint = (f"Download it from {spec.source_url} and put it there (or set ${WEIGHTS_ENV}, or pass "
                "weights_path)." if spec.source_url and not user_given else "Pass an existing file.")
        raise TaskError(f"weights file for backbone {spec.name!r} not found: {path}. {hint}")
    if not path.is_file():
        raise TaskError(f"weights path for backbone {spec.name!r} is not a regular file: {path}")
    return path


def local_file(where: str | Path, spec: BackboneSpec, user_given: bool = False, sha256: str = "") -> Path:
    """A local, existing weights file for `where`: a URI is staged (and checked against `sha256`) first."""
    if isinstance(where, str) and is_uri(where):
        if not exists(where):
            hint = "" if user_given or not spec.source_url else f" Download it from {spec.source_url} and upload it there."
            raise TaskError(f"weights file for backbone {spec.name!r} not found: {where}.{hint}")
        where = stage(where, sha256=sha256 or None)
    return _checked_file(Path(where).expanduser(), spec, user_given)


def create_model(spec: BackboneSpec, pretrained: bool = False, arch: str | None = None) -> torch.nn.Module:
    """timm.create_model for the spec (built at its input size where the architecture needs that)."""
    kwargs = dict(spec.model_kwargs)
    # Fixed-size models (ViTs) must be built at the input size; CNNs take any size as is.
    fixed = getattr(timm.models.get_pretrained_cfg(spec.arch, allow_unregistered=True), "fixed_input_size", False)
    if spec.input_size and fixed:
        kwargs.setdefault("img_size", spec.input_size)
    try:
        return timm.create_model(arch or spec.arch, pretrained=pretrained, **kwargs)
    except TaskError:
        raise
    except Exception as err:  # timm raises RuntimeError/ValueError/TypeError/download errors
        raise TaskError(f"backbone {spec.name!r}: timm cannot create {arch or spec.arch!r} "
                        f"with {kwargs} (pretrained={pretrained}): {err}") from err


def load_file(spec: BackboneSpec, path: Path, digest: str = "") -> Loaded:
    """The spec's model with the checkpoint at `path` loaded strictly through the spec's adapter."""
    state = adapt(spec.adapter, unwrap_checkpoint(read_checkpoint(path)))
    model = create_model(spec)
    load_strict(model, state, str(path))
    return model, digest or file_sha256(path), str(path)


def _load_published(spec: BackboneSpec, _ref: str) -> Loaded:
    path = local_file(locate(spec), spec, sha256=spec.sha256)
    digest = file_sha256(path)
    if spec.sha256 and digest != spec.sha256:
        raise TaskError(f"weights file {path} for backbone {spec.name!r} has sha256 {digest}, expected "
                        f"{spec.sha256}: it is not the published checkpoint ({spec.source_url})")
    return load_file(spec, path, digest)


def _load_random(spec: BackboneSpec, seed: str) -> Loaded:
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG state alone
        torch.manual_seed(int(seed or 0))
        model = create_model(spec)
    return model, state_dict_sha256(model.state_dict()), None


def _load_timm(spec: BackboneSpec, tag: str) -> Loaded:
    # timm keeps the downloaded file in its own cache; the digest covers the loaded tensors instead.
    model = create_model(spec, pretrained=True, arch=f"{spec.arch}.{tag}" if tag else spec.arch)
    return model, state_dict_sha256(model.state_dict()), None


WEIGHT_LOADERS: dict[str, Callable[[BackboneSpec, str], Loaded]] = {
    "file": _load_published, "package": _load_published, "timm": _load_timm, "random": _load_random}
