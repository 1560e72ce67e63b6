"""The package's layers (docs/architecture.md) hold: each imports only the layers below it,
no module imports another's private names, there are no import cycles, and the lower
layers load neither Optuna nor Ray (nor the command line's heavy engines)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hptransfer"

# Bottom to top; a module may import its own layer and the ones before it. The root
# ``hptransfer/__init__.py`` is the lazy façade over all of them and is not a layer.
LAYERS = [
    ("errors",),
    ("spec", "hparams", "budget", "record", "provenance", "space"),
    ("data",),
    ("mup",),
    ("models",),
    ("training",),
    ("checks",),
    ("tracking",),
    ("study",),
    ("backends",),
    ("transfer",),
    ("confirmation",),
    ("report",),
    ("reproduction",),
    ("cli",),
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
# what `import` of these layers must not pull in (heavy engines and optional extras)
LIGHT = {"training": ("optuna", "ray"), "checks": ("optuna", "ray"),
         "mup.rules": ("torch", "optuna", "ray"), "data": ("torch", "optuna", "ray"),
         "study.config": ("torch", "optuna", "ray"), "transfer": ("torch", "ray"),
         "cli": ("torch", "optuna", "ray", "matplotlib"),
         # the adapters import their library: only when that tracker is asked for
         "tracking.tracker": ("torch", "optuna", "ray", "wandb", "mlflow", "tensorboard"),
         "tracking.run": ("torch", "optuna", "ray", "wandb", "mlflow", "tensorboard")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("hptransfer", *parts))] = path
    return found


MODULES = _modules()
# what can be imported without side effects (``python -m hptransfer.cli`` runs the CLI)
IMPORTABLE = [m for m in MODULES if not m.endswith(".__main__")]


def _imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(module, names, type_checking_only, line) of every import of an hptransfer module,
    at any depth (function-level imports count: a lazy import is still a dependency)."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for child in node.body for n in ast.walk(child)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], id(node) in type_only,
                        node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in type_only, node.lineno) for a in node.names]
    return [i for i in out if i[0] == "hptransfer" or i[0].startswith("hptransfer.")]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_has_a_layer():
    missing = sorted({_layer(m) for m in MODULES} - set(LEVEL) - {None})
    assert not missing, f"add these to LAYERS (and docs/architecture.md): {missing}"


def test_each_layer_imports_only_layers_below_it():
    upward = []
    for module, path in MODULES.items():
        layer = _layer(module)
        if layer is None:
            continue
        for target, _names, _, line in _imports(path):
            # `from hptransfer import __version__` is the package's own metadata
            other = _layer(target) if target != "hptransfer" else None
            if other is not None and LEVEL[other] > LEVEL[layer]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer}) imports "
                              f"{target} ({other})")
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    private = []
    for module, path in MODULES.items():
        for target, names, _, line in _imports(path):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    private.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports "
                                   f"{target}.{name}")
    assert not private, "promote these to package-internal public names:\n" + "\n".join(
        private)


def test_no_import_cycles():
    """Among runtime imports (type-only ones excluded), module level or lazy."""
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names, type_only, _ in _imports(path):
            if type_only:
                continue
            # `from hptransfer.x import y` may name a submodule y
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in MODULES and candidate != module:
                    graph[module].add(candidate)
                    break
    # a package's __init__ importing its own modules is how packages work, not a cycle
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" → ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("layer", sorted(LIGHT))
def test_lower_layers_stay_light(layer):
    """Importing every module of ``layer`` loads none of its forbidden engines."""
    prefix = f"hptransfer.{layer}"
    modules = [m for m in IMPORTABLE if m == prefix or m.startswith(prefix + ".")]
    forbidden = LIGHT[layer]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(','.join(n for n in {forbidden!r} if n in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert not loaded, f"importing {prefix} loads {loaded}"


def test_every_public_name_exists():
    """Each module's ``__all__`` names only what it defines or imports."""
    import importlib

    missing = []
    for module in IMPORTABLE:
        imported = importlib.import_module(module)
        missing += [f"{module}.{n}" for n in getattr(imported, "__all__", ())
                    if not hasattr(imported, n)]
    assert not missing, missing


def test_the_facade_names_stay_functions_after_their_packages_load():
    """A subpackage named like a façade function (``hptransfer.train``, ``.confirm``) would
    replace the function by the module as soon as anything imported the package: the lazy
    façade then handed out a module. No layer may share a name with a public function."""
    code = ("import hptransfer as hp, importlib, pkgutil; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(hp.__path__, "
            "'hptransfer.') if not m.name.endswith('__main__')]; "
            "bad = [n for n in hp.__all__ if n != '__version__' and "
            "type(getattr(hp, n)).__name__ == 'module']; "
            "print(bad); raise SystemExit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
