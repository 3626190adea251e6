"""The package's stages import one way: data <- nets <- train; evaluate and serve read run directories and nets,
never train (nor each other); bench and the commands may use everything. Every module of genre_tf and export/ is
checked, function-level imports included, and a wrong-way arrow is printed as the chain of imports that makes it."""
import ast
import graphlib
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "genre_tf"
# Which stages each stage may import. "shared" is the package itself, files.py, limits.py and config.py; run_dir.py, the
# hand-off, sits above data (it records the prepared dataset a run read); "commands" are the short entry modules
# (python -m genre_tf.prepare, .predict, .batch_predict, .features) and export/'s scripts.
BELOW = {
    "shared": set(),
    "data": {"shared"},
    "run_dir": {"shared", "data"},
    "nets": {"shared", "data", "run_dir"},
    "evaluate": {"shared", "data", "run_dir", "nets"},
    "serve": {"shared", "data", "run_dir", "nets"},
    "train": {"shared", "data", "run_dir", "nets", "evaluate"},
    "bench": {"shared", "data", "run_dir", "nets", "evaluate", "serve", "train"},
    "commands": {"shared", "data", "run_dir", "nets", "evaluate", "serve", "train", "bench"},
}
SHARED = {PACKAGE, f"{PACKAGE}.files", f"{PACKAGE}.config", f"{PACKAGE}.limits"}
COMMANDS = {f"{PACKAGE}.prepare", f"{PACKAGE}.predict", f"{PACKAGE}.batch_predict", f"{PACKAGE}.features"}


def module_files() -> dict[str, Path]:
    """genre_tf's own modules by dotted name (a package by its __init__), and export/'s scripts."""
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    # export/'s scripts put export/ on sys.path and import each other by bare name (`import client`)
    return files | {f"export/{path.stem}": path for path in (ROOT / "export").glob("*.py")}


def stage_of(module: str) -> str:
    """The stage a module belongs to: its subpackage, or one of the top level's roles."""
    if module in SHARED:
        return "shared"
    if module in COMMANDS or module.startswith("export/"):
        return "commands"
    if module == f"{PACKAGE}.run_dir":
        return "run_dir"
    stage = module.split(".")[1]
    assert stage in BELOW, f"{module} belongs to no stage: put it in a stage folder, or name its role here"
    return stage


def is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` blocks are never run, so their imports are not edges."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, module: str) -> list[tuple[str, int]]:
    """(dotted name, line) of every import anywhere in a module: top level, in functions, relative, importlib."""
    package = module.rsplit(".", 1)[0] if module.startswith(PACKAGE + ".") else PACKAGE
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if is_type_checking(node):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else (node.module or "")
            base = f"{base}.{node.module}" if node.level and node.module else base
            # `from genre_tf import training` imports a module; `from genre_tf.x import f` imports genre_tf.x
            found += [(base, node.lineno)] + [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append((node.args[0].value, node.lineno))
    return found


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module of genre_tf or export/: first line importing it}."""
    graph = {}
    for module, path in files.items():
        edges = {}
        for name, line in sorted(imported_names(ast.parse(path.read_text(), str(path)), module), key=lambda x: x[1]):
            parts = name.split(".")
            # importing genre_tf.a.b runs genre_tf/__init__.py, then genre_tf/a.py
            targets = [".".join(parts[:i]) for i in range(1, len(parts) + 1)] if parts[0] == PACKAGE else []
            targets += [f"export/{name}"] if module.startswith("export/") else []
            for target in targets:
                if target in files and target != module:
                    edges.setdefault(target, line)
        graph[module] = edges
    return graph


def chain_to(graph: dict[str, dict[str, int]], start: str, goal: str) -> list[str] | None:
    """The shortest import chain start -> ... -> goal, each step with the line that imports, or None."""
    came_from, queue = {start: None}, deque([start])
    while queue:
        module = queue.popleft()
        if module == goal:
            steps = []
            while came_from[module] is not None:
                parent = came_from[module]
                steps.append(f"{module} (line {graph[parent][module]} of {parent})")
                module = parent
            return [start] + steps[::-1]
        for target in graph[module]:
            if target not in came_from:
                came_from[target] = module
                queue.append(target)
    return None


def wrong_way(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Each import that points at a stage its importer may not use, as the chain from the importer to it."""
    return [[module, f"{target} (line {line} of {module})"] for module, edges in sorted(graph.items())
            for target, line in edges.items()
            if stage_of(target) != stage_of(module) and stage_of(target) not in BELOW[stage_of(module)]]


def test_the_walk_sees_real_imports_of_every_form():
    files = module_files()
    graph = import_graph(files)
    assert {"genre_tf.data.prepare", "genre_tf.nets.network", "genre_tf.bench", "export/client"} <= set(graph)
    assert "genre_tf.serve.serving" in graph["export/export_savedmodel"]  # a function-level import
    assert "genre_tf" in graph["genre_tf.serve.predict"]  # importing genre_tf.x.y runs genre_tf/__init__.py first
    assert "genre_tf.data" in graph["genre_tf.data.prepare"]  # ... and genre_tf/x/__init__.py
    tree = ast.parse("from genre_tf.train import training\nfrom . import files\nfrom .metrics import f1_scores\n"
                     "import genre_tf.data.dataset as d\nimportlib.import_module('genre_tf.bench.table3')\n"
                     "if TYPE_CHECKING:\n    import genre_tf.nets.models\n")
    names = {name for name, _ in imported_names(tree, "genre_tf.evaluate.evaluation")}
    assert {"genre_tf.train.training", "genre_tf.evaluate.files", "genre_tf.evaluate.metrics",
            "genre_tf.data.dataset", "genre_tf.bench.table3"} <= names
    assert "genre_tf.nets.models" not in names
    chain = chain_to({"a": {"b": 3}, "b": {"c": 7}, "c": {}}, "a", "c")
    assert chain == ["a", "b (line 3 of a)", "c (line 7 of b)"]


def test_every_module_imports_only_its_own_stage_and_those_below():
    graph = import_graph(module_files())
    broken = wrong_way(graph)
    assert not broken, "imports that point the wrong way between stages:\n" + "\n".join(" -> ".join(c) for c in broken)


def test_a_planted_wrong_way_import_is_caught_and_its_chain_printed():
    graph = import_graph(module_files())
    graph["genre_tf.nets.models"] = dict(graph["genre_tf.nets.models"], **{"genre_tf.train.losses": 12})
    graph["genre_tf.serve.serving"] = dict(graph["genre_tf.serve.serving"], **{"genre_tf.evaluate.metrics": 3})
    assert wrong_way(graph) == [
        ["genre_tf.nets.models", "genre_tf.train.losses (line 12 of genre_tf.nets.models)"],
        ["genre_tf.serve.serving", "genre_tf.evaluate.metrics (line 3 of genre_tf.serve.serving)"]]


def test_nothing_after_training_reaches_it_through_any_chain():
    """evaluate, serve and export never import train, directly or through any chain of genre_tf's modules."""
    files = module_files()
    graph = import_graph(files)
    starts = [module for module in graph if stage_of(module) in ("evaluate", "serve") or module.startswith("export/")]
    chains = [chain for start in starts for goal in graph if goal.startswith("genre_tf.train.")
              if (chain := chain_to(graph, start, goal))]
    assert len(starts) > 10
    assert not chains, "chains into training:\n" + "\n".join(" -> ".join(chain) for chain in chains)


def test_the_import_graph_has_no_cycle():
    graph = import_graph(module_files())
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
    assert order.index("genre_tf.config") < order.index("genre_tf.train.training")
