"""The package's arrows: which sub-package may import which, no import cycle, no re-exports.

Read from the source with `ast` (function-level imports included: a lazy import is still an arrow), so the test
needs nothing installed beyond the standard library and fails the moment an arrow runs back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tune's sub-packages and the ones each may import (besides itself). __main__ is the CLI and may import all.
ALLOWED = {
    "core": set(),
    "store": {"core"},
    "exec": {"core"},
    "memory": {"exec", "core"},
    # The memory report shows the judge's calibration and skip margin, so it reads tune.memory.judge.
    "report": {"store", "memory", "core"},
    "search": {"exec", "store", "memory", "report", "core"},
}


def modules(package: str) -> dict[str, Path]:
    """Every module of a top-level package, by dotted name."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """The dotted modules `path` imports anywhere in its body (relative imports resolved against `name`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".")[: -node.level] if path.name != "__init__.py" else name.split(".")
                base = ".".join([*pkg, base]) if base else ".".join(pkg)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from tune.exec import worker`
    return found


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's own modules it imports."""
    mods = modules(package)
    return {m: {i for i in imports(p, m) if i in mods and i != m} for m, p in mods.items()}


def subpackage(module: str) -> str:
    """tune.search.study -> search; tune.__main__ -> __main__."""
    return module.split(".")[1] if module.count(".") else ""


def back_arrows(g: dict[str, set[str]]) -> list[str]:
    """The imports of `g` between tune's sub-packages that ALLOWED does not allow (a new sub-package included)."""
    wrong = []
    for mod, deps in g.items():
        src = subpackage(mod)
        if src in ("", "__main__"):
            continue
        for dep in deps:
            dst = subpackage(dep)
            if src not in ALLOWED or (dst and dst != src and dst not in ALLOWED[src]):
                wrong.append(f"{mod} -> {dep}")
    return sorted(wrong)


def test_tune_sub_packages_import_only_along_the_allowed_arrows():
    assert not back_arrows(graph("tune")), "arrows running back: " + ", ".join(back_arrows(graph("tune")))


def test_an_arrow_running_back_is_found():
    g = {"tune.report.frame": {"tune.search.dispatch", "tune.core.schema"}, "tune.core.schema": set(),
         "tune.search.dispatch": {"tune.core.schema"}, "tune.extra.x": {"tune.core.schema"}}
    assert back_arrows(g) == ["tune.extra.x -> tune.core.schema", "tune.report.frame -> tune.search.dispatch"]


def test_no_sub_package_imports_the_cli():
    g = graph("tune")
    assert not [m for m, deps in g.items() if "tune.__main__" in deps and m != "tune.__main__"]


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `g` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep] if dep in path else [*path, dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(g):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_between_modules():
    for package in ("tune", "gptcore", "benchmarks"):
        g = graph(package)
        # A package's __init__ is imported with any of its modules: not an arrow of the design.
        g = {m: {d for d in deps if modules(package)[d].name != "__init__.py"} for m, deps in g.items()}
        assert _cycle(g) is None, f"{package}: import cycle " + " -> ".join(_cycle(g) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_packages_point_one_way():
    for package, forbidden in (("gptcore", ("tune", "benchmarks")), ("tune", ("benchmarks",))):
        for mod, path in modules(package).items():
            bad = {i for i in imports(path, mod) if i.split(".")[0] in forbidden}
            assert not bad, f"{mod} imports {sorted(bad)}: {package} must not depend on {forbidden}"


def test_the_model_imports_only_torch_and_the_config():
    path = ROOT / "gptcore" / "model.py"
    ours = {i for i in imports(path, "gptcore.model") if i.split(".")[0] not in ("torch", "__future__", "math",
                                                                                  "dataclasses", "typing")}
    assert all(i == "gptcore.config" or i.startswith("gptcore.config.") for i in ours), sorted(ours)


def test_no_re_exports():
    own = ("from tune", "from gptcore", "from benchmarks", "from .")
    for package in ("tune", "gptcore", "benchmarks"):
        for mod, path in modules(package).items():
            bad = [line for line in path.read_text().splitlines() if line.lstrip().startswith(own) and "F401" in line]
            assert not bad, f"{mod}: a re-export ({bad[0].strip()}); import the name from the module that owns it"


# Optuna's private API (underscore names): one adapter module uses it, so an Optuna upgrade is checked in one place.
OPTUNA_ADAPTER = "tune/store/_optuna.py"
PRIVATE_OPTUNA = ("._storage", "._trial_id", "._study_id", "._backend", "optuna.storages._", "optuna.study._",
                  "optuna.trial._")


def private_optuna_uses(files: dict[str, str]) -> list[str]:
    """'path: needle' for each use of Optuna's private API outside the adapter."""
    return [f"{path}: {needle}" for path, text in files.items() if path != OPTUNA_ADAPTER
            for needle in PRIVATE_OPTUNA if needle in text]


def test_optunas_private_api_is_used_only_behind_its_adapter():
    files = {str(p.relative_to(ROOT)): p.read_text() for folder in ("tune", "benchmarks")
             for p in (ROOT / folder).rglob("*.py")}
    assert OPTUNA_ADAPTER in files
    assert private_optuna_uses(files) == []


def test_a_private_optuna_use_is_found():
    assert private_optuna_uses({"tune/x.py": "s = study._storage", OPTUNA_ADAPTER: "study._storage"}) == [
        "tune/x.py: ._storage"]
