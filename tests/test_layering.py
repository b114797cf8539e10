"""The source's layering, read from its imports (every import, also those inside functions): no module
imports one that imports it back, directly or around a loop, neither between modules nor between the
packages of ``src`` (``src.tasks`` ↔ ``src.training`` would be a loop); nothing below the pipeline
imports the layers above it (``UPPER``); and the config libraries are read only where config files are
(``ALLOWED``): everything below the pipeline gets option objects."""
import ast
from pathlib import Path

from tests.conftest import ROOT

SRC = ROOT / "src"
CONFIG_LIBS = {"omegaconf", "hydra"}
# Who may import omegaconf / hydra: the entry points and the layer that reads config files.
ALLOWED = {
    "src.config",       # composes conf/ and turns it into options
    "src.main",         # the Hydra command line
    "src.api",          # the Python API composes the same config
    "src.tracking",     # the logger is instantiated from its config group, in Hydra's run folder
    "src.lm.base_lm",   # its command line reads conf/base_lm/default.yaml
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (``from a import b``: a, and a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(src module -> the src modules it imports, src module -> the top-level outside packages it imports)."""
    files = {module_name(p): p for p in SRC.rglob("*.py") if p != SRC / "__init__.py"}

    def resolve(name: str) -> str | None:  # the module file a dotted name lives in (not a package's __init__)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name if name not in ("", "src") else None

    inner, outer = {}, {}
    for mod, path in files.items():
        names = imports(path)
        inner[mod] = {r for n in names if n.split(".")[0] == "src" and (r := resolve(n)) and r != mod}
        outer[mod] = {n.split(".")[0] for n in names if n.split(".")[0] != "src"}
    return inner, outer


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def package(mod: str) -> str:
    """``src.tasks.causal`` -> ``tasks``; ``src.training`` -> ``training``."""
    return mod.split(".")[1]


def test_no_import_cycles_between_modules():
    inner, _ = graph()
    assert cycles(inner) == []


def test_no_import_cycles_between_packages():
    inner, _ = graph()
    pkgs: dict[str, set[str]] = {}
    for mod, targets in inner.items():
        pkgs.setdefault(package(mod), set()).update(package(t) for t in targets if package(t) != package(mod))
    assert cycles(pkgs) == []


# The layers above the pipeline's stages: entry points, the config layer, the pipeline and its checks, results.
UPPER = {"src.main", "src.api", "src.config", "src.pipeline", "src.checks", "src.tracking", "src.report",
         "src.results"}
# The embedded LM's own command line (``python -m src.lm.base_lm``) reads its default config file.
UPWARD_ALLOWED = {("src.lm.base_lm", "src.config")}


def test_nothing_below_the_pipeline_imports_upwards():
    inner, _ = graph()
    upward = {(mod, t) for mod, targets in inner.items() if mod not in UPPER and not mod.startswith("src.bench.")
              for t in targets & UPPER}
    assert upward <= UPWARD_ALLOWED, sorted(upward - UPWARD_ALLOWED)


def test_only_the_config_layer_imports_the_config_libraries():
    _, outer = graph()
    users = {mod for mod, libs in outer.items() if libs & CONFIG_LIBS}
    bench = {mod for mod in users if mod.startswith("src.bench.")}  # command lines that compose configs
    assert users - bench <= ALLOWED, sorted(users - bench - ALLOWED)


def test_the_checks_find_a_cycle_and_a_config_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert imports(SRC / "config.py") >= {"hydra"}
