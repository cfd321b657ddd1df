"""The one-way data flow of docs/architecture.md, checked on the source (ast, nothing imported).

`sea` is pure torch, `tasks` never schedules; inside `orchestrator`, imports run
commands → report / sweep / extract → tasks, sea, and each folder is used only through the names
its `__init__` exports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sea", "tasks", "orchestrator")
FOLDERS = ("extract", "sweep", "report", "finetune", "commands")
FORBIDDEN = {
    "sea": {"ray", "mlflow", "pyarrow", "pandas", "tasks", "orchestrator", "timm", "torchvision"},
    "tasks": {"ray", "mlflow", "sea", "orchestrator", "pyarrow"},
}
# folder -> orchestrator folders it must never import, directly or through another module
FOLDER_FORBIDDEN = {
    "extract": {"sweep", "report", "finetune", "commands"},
    "sweep": {"report", "commands"},
    "report": {"sweep", "extract", "finetune", "commands"},
    "finetune": {"sweep", "report", "commands"},   # the sweep's driver runs it, never the other way round
}
TOP_LEVEL_MAY_IMPORT: set[str] = set()   # what config shares with the folders lives in protocol.py, sea.methods
MAX_LINES, MAX_MODULES = 300, 12
EXPORTING = ("extract", "sweep", "report", "finetune")   # folders used from outside through `_EXPORTS` only


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) of every absolute import in the file, lazy (function-level) ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return found


def _sources(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def _folder(module: str) -> str | None:
    """The orchestrator folder a module belongs to ("extract", …), "" for the top level, None outside."""
    parts = module.split(".")
    if parts[0] != "orchestrator":
        return None
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FOLDERS) else ""


def _path(module: str) -> Path:
    base = REPO_ROOT / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _graph() -> dict[str, set[str]]:
    """orchestrator module -> the orchestrator modules it imports; a name taken from a folder's
    `__init__` counts as an import of the module that defines it (the exports are lazy)."""
    modules = {_module_name(p): p for p in _sources("orchestrator")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for module, names in _imports(path):
            if not module.startswith("orchestrator"):
                continue
            targets.add(module)
            targets |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            folder = module.split(".")[1] if module.count(".") == 1 else ""
            if folder in EXPORTING:
                exports = _export_map(folder)
                targets |= {f"{module}.{exports[n]}" for n in names if n in exports}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _export_map(folder: str) -> dict[str, str]:
    """name -> defining module, from the `_EXPORTS` literal of orchestrator/<folder>/__init__.py."""
    tree = ast.parse((REPO_ROOT / "orchestrator" / folder / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


def _exports(folder: str) -> set[str]:
    return set(_export_map(folder))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_architecture_allows(package):
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted({m.split(".")[0] for m, _ in _imports(path)} & FORBIDDEN[package])
        for path in _sources(package)
    }
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("folder", sorted(FOLDER_FORBIDDEN))
def test_orchestrator_folders_import_one_way_even_indirectly(folder):
    graph = _graph()
    offenders = {}
    for module in (m for m in graph if _folder(m) == folder):
        bad = {_folder(t) for t in _reachable(graph, module)} & FOLDER_FORBIDDEN[folder]
        if bad:
            offenders[module] = sorted(bad)
    assert not offenders, f"{folder} must not reach {sorted(FOLDER_FORBIDDEN[folder])}: {offenders}"


def test_sweep_never_imports_report_and_the_trial_never_imports_tracking():
    graph = _graph()
    sweep_reach = set().union(*(_reachable(graph, m) for m in graph if _folder(m) == "sweep"))
    assert not {m for m in sweep_reach if _folder(m) == "report"}
    trial_reach = _reachable(graph, "orchestrator.sweep.trial")
    assert "orchestrator.sweep.tracking" not in trial_reach
    trial_roots = {m.split(".")[0] for mod in ("orchestrator.sweep.trial", *trial_reach) for m, _ in _imports(_path(mod))}
    assert "mlflow" not in trial_roots


def test_extraction_does_not_import_the_sweeps_cell_planning():
    graph = _graph()
    reach = set().union(*(_reachable(graph, m) for m in graph if _folder(m) == "extract"))
    assert "orchestrator.sweep.cells" not in reach


def _module_graph() -> dict[str, set[str]]:
    """Every module of the three packages -> the modules of them it imports, lazy and TYPE_CHECKING imports
    included (a circle kept from breaking by a function-level import is still a circle). `from pkg import
    sub` is an import of the submodule `pkg.sub`; a name taken from a lazily exporting `__init__` is an
    import of the module that defines it."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in _sources(pkg)}
    lazy = {"sea": _sea_exports(), **{f"orchestrator.{f}": _export_map(f) for f in EXPORTING}}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for module, names in _imports(path):
            if module.split(".")[0] not in PACKAGES:
                continue
            subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            defined = {f"{module}.{lazy[module][n]}" for n in names if n in lazy.get(module, {})}
            targets |= subs | defined
            if not names or len(subs) + len(defined) < len(names):
                targets.add(module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _sea_exports() -> dict[str, str]:
    tree = ast.parse((REPO_ROOT / "sea" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of the graph (its modules, the first repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str]:
        state[module] = 1
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[module] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_no_module_imports_itself_through_others():
    """No import circle in sea, tasks or orchestrator, lazy imports included (report's stats → reference →
    blocks → plots → stats and tasks' backbones ↔ weights were kept from breaking by function-level imports)."""
    circle = _cycle(_module_graph())
    assert not circle, "import circle: " + " → ".join(circle)


def test_the_cycle_check_finds_a_circle():
    """The check above is a real check: it finds a planted circle, a lazy one included."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"b"}}) == []
    graph = _module_graph()
    graph["orchestrator.names"] = graph["orchestrator.names"] | {"orchestrator.config"}   # config imports names
    assert _cycle(graph)


def test_sea_exports_exist_and_the_registry_imports_no_torch():
    import subprocess
    import sys

    import sea

    missing = [name for name in sea.__all__ if not hasattr(sea, name)]
    assert not missing, f"sea exports missing names {missing}"
    code = "import sys, sea.methods, orchestrator.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_top_level_modules_never_import_commands_or_report():
    graph = _graph()
    for module in (m for m in graph if _folder(m) == ""):
        direct = {_folder(t) for t in graph[module]} - {"", None}
        assert direct <= TOP_LEVEL_MAY_IMPORT, f"{module} imports {sorted(direct)}"


def test_code_outside_a_folder_uses_only_its_exported_names():
    offenders = []
    for path in [*_sources("orchestrator"), *sorted((REPO_ROOT / "benchmarks").glob("*.py"))]:
        here = _folder(_module_name(path)) if path.is_relative_to(REPO_ROOT / "orchestrator") else "benchmarks"
        for module, names in _imports(path):
            folder = _folder(module)
            if folder not in EXPORTING or folder == here:
                continue
            if module != f"orchestrator.{folder}":
                offenders.append(f"{path.relative_to(REPO_ROOT)}: imports {module} (use orchestrator.{folder})")
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n} is not exported by orchestrator.{folder}"
                          for n in names if n not in _exports(folder)]
    assert not offenders, "\n".join(offenders)


def test_every_exported_name_exists():
    import importlib

    for folder in EXPORTING:
        package = importlib.import_module(f"orchestrator.{folder}")
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, f"orchestrator.{folder} exports missing names {missing}"


def _sub_folders() -> list[str]:
    """Packages below an orchestrator folder (e.g. orchestrator.report.evidence): how a folder grows past
    MAX_MODULES (issue #23), each one a layer of its folder."""
    return sorted(_module_name(p) for p in (REPO_ROOT / "orchestrator").glob("*/*/__init__.py"))


@pytest.mark.parametrize("sub", _sub_folders())
def test_a_sub_folder_is_a_layer_its_folder_imports_one_way(sub):
    """No module of the sub-folder reaches, even indirectly, a module outside it that imports it: the folder
    uses the layer, never the other way round. Its __init__ says which layer it is."""
    graph = _graph()
    inside = {m for m in graph if m == sub or m.startswith(sub + ".")}
    users = {m for m in graph if m not in inside and graph[m] & inside}
    offenders = {m: sorted(_reachable(graph, m) & users) for m in inside if _reachable(graph, m) & users}
    assert not offenders, f"{sub} imports modules that import it: {offenders}"
    assert ast.get_docstring(ast.parse(_path(sub).read_text())), f"{sub}/__init__.py must say which layer it is"


def test_modules_are_readable_in_one_sitting_and_folders_stay_small():
    long = {str(p.relative_to(REPO_ROOT)): n for pkg in PACKAGES for p in _sources(pkg)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    folders = {p.parent for pkg in PACKAGES for p in _sources(pkg)}   # a sub-folder counts on its own
    crowded = {str(f.relative_to(REPO_ROOT)): n for f in folders
               if (n := len([p for p in f.glob("*.py") if p.name != "__init__.py"])) > MAX_MODULES}
    assert not crowded, f"folders with more than {MAX_MODULES} modules: {crowded}"


def test_test_modules_have_unique_names():
    """The test folders are no packages: pytest imports each test module by its basename, so two folders
    holding the same name fail the whole run at collection (tests/extract and tests/commands both had
    test_plan.py)."""
    names: dict[str, list[str]] = {}
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        names.setdefault(path.name, []).append(str(path.relative_to(REPO_ROOT)))
    assert not {n: p for n, p in names.items() if len(p) > 1}
