"""The package's shape: no import cycle, counted with the imports inside functions too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_dcgmm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(name: str, node: ast.AST, modules: set[str]) -> set[str]:
    """The package's modules an import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = node.module or ""
    if node.level:  # relative imports
        base = ".".join(name.split(".")[: -node.level] + ([base] if base else []))
    found = {f"{base}.{alias.name}" for alias in node.names} & modules
    return found or ({base} & modules)


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        nodes = [
            n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))
        ]
        graph[name] = set().union(*(imported(name, node, modules) for node in nodes)) - {name}
        if "importlib.import_module" in path.read_text():  # the dispatcher loads every command
            graph[name] |= {m for m in modules if m.startswith("pyro_dcgmm.cli.") and m != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_also_at_run_time():
    graph = import_graph()
    assert len(graph) > 40 and "pyro_dcgmm.cli.train" in graph["pyro_dcgmm.cli.main"]
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_functions_and_modules_stay_short():
    # every function reads at once (40 lines, 6 parameters; the estimators' scikit-learn __init__
    # takes, and stores as given, one parameter per setting) and every module stays under 400 lines
    settings_inits = ("pyro_dcgmm.estimator.__init__", "pyro_dcgmm.class_models.__init__")
    long, wide, large = [], [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400:
            large.append(module_name(path))
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{module_name(path)}.{node.name}"
            if where in settings_inits:
                continue
            if node.end_lineno - node.lineno + 1 > 40:
                long.append(where)
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            if len([a for a in arguments if a.arg not in ("self", "cls")]) > 6:
                wide.append(where)
    assert (long, wide, large) == ([], [], [])
