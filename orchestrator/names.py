"""User-given names that become paths (sweep names, store folders, report files): one rule, one home.

A safe name is letters, digits, '.', '_' or '-', starting with a letter or digit, and never holds
'..': it cannot leave the folder it names a child of. Names with a `scheme:` prefix
("imagefolder:/data/x", "random:resnet10t@32", "ensemble:a+b") become a slug plus a short hash.
"""

from __future__ import annotations

import hashlib
import re

from orchestrator.errors import OrchestratorError

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SCHEME = re.compile(r"[a-z][a-z0-9_]*:")
_RULE = "letters, digits, '.', '_' or '-'"


def slug(text: str, allowed: str = "A-Za-z0-9-", sep: str = "_", limit: int = 48, fallback: str = "x") -> str:
    """`text` with every run of characters outside `allowed` (a regex class body) replaced by `sep`,
    trimmed of separators and cut to `limit`: for names that become file names, never a path."""
    trim = sep + "-."
    return re.sub(f"[^{allowed}]+", sep, text).strip(trim)[:limit].strip(trim) or fallback


def ray_run_name(text: str) -> str:
    """A Ray Tune / Ray Train run name (a folder of the sweep's storage) from `text`: each run of other
    characters than letters, digits, '.', '_' and '-' becomes '_'."""
    return slug(text, "A-Za-z0-9_.-", limit=200)


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and bool(_SAFE.fullmatch(name)) and ".." not in name


def check_safe_name(name: str, what: str, why: str) -> str:
    """`name` itself, or an OrchestratorError saying `what` must be a safe name and `why`."""
    if not is_safe_name(name):
        raise OrchestratorError(f"{what} {name!r} must be {_RULE} ({why}: no '/', '..' or spaces)")
    return name


def path_component(name: str, what: str = "name") -> str:
    """The path component for `name`: itself when already safe, else a slug plus a short hash.

    Only names with a `scheme:` prefix are slugged; any other name that is not a plain file name
    (separators, `..`, absolute paths, empty) is refused, since it can only be a typo or an attack.
    """
    if is_safe_name(name):
        return name
    if _SCHEME.match(name):
        return f"{slug(name)}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    raise OrchestratorError(
        f"{what} {name!r} cannot name a store folder: use {_RULE} "
        "(no '/', '..', or absolute paths), or a 'scheme:' name such as 'imagefolder:/path'"
    )
