"""The run directory is the one hand-off: evaluation, serving, export and predict never import training (issue 24)."""
import ast
import glob
import os
from collections import deque
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "genre_tf"
FORBIDDEN = "genre_tf.training"
# Read from the source only: nothing here is imported, so the test also runs where TensorFlow is missing.
ROOTS = ["genre_tf/evaluation.py", "genre_tf/serving.py", "genre_tf/predict.py", *sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(str(ROOT / "export" / "*.py")))]


def module_files() -> dict[str, Path]:
    """genre_tf's own modules by dotted name (the package's __init__ as `genre_tf`), and export/'s scripts."""
    files = {PACKAGE: ROOT / PACKAGE / "__init__.py"}
    files |= {f"{PACKAGE}.{path.stem}": path for path in (ROOT / PACKAGE).glob("*.py") if path.stem != "__init__"}
    # export/'s scripts put export/ on sys.path and import each other by bare name (`import client`)
    return files | {f"export/{path.stem}": path for path in (ROOT / "export").glob("*.py")}


def name_of(path: str, files: dict[str, Path]) -> str:
    return next(name for name, file in files.items() if file == ROOT / path)


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


def test_the_walk_sees_real_imports_of_every_form():
    files = module_files()
    graph = import_graph(files)
    assert set(ROOTS) >= {"genre_tf/evaluation.py", "export/export_savedmodel.py", "export/client.py"}
    assert len(graph) > 25 and any(FORBIDDEN in edges for edges in graph.values())  # bench, speed... train
    assert "genre_tf.serving" in graph["export/export_savedmodel"]  # a function-level import
    assert "genre_tf" in graph["genre_tf.predict"]  # importing genre_tf.x runs genre_tf/__init__.py first
    tree = ast.parse("from genre_tf import training\nfrom . import files\nfrom .metrics import f1_scores\n"
                     "import genre_tf.dataset as d\nimportlib.import_module('genre_tf.bench')\n"
                     "if TYPE_CHECKING:\n    import genre_tf.models\n")
    names = {name for name, _ in imported_names(tree, "genre_tf.serving")}
    assert {FORBIDDEN, "genre_tf.files", "genre_tf.metrics", "genre_tf.dataset", "genre_tf.bench"} <= names
    assert "genre_tf.models" not in names
    chain = chain_to({"a": {"b": 3}, "b": {"c": 7}, "c": {}}, "a", "c")
    assert chain == ["a", "b (line 3 of a)", "c (line 7 of b)"]


def test_evaluation_serving_export_and_predict_never_import_training():
    """Not directly, nor through any chain of genre_tf's own modules (function-level imports included)."""
    files = module_files()
    graph = import_graph(files)
    chains = [chain for path in ROOTS if (chain := chain_to(graph, name_of(path, files), FORBIDDEN))]
    for chain in chains:
        print(" -> ".join(chain))
    assert not chains, "imports of genre_tf.training:\n" + "\n".join(" -> ".join(chain) for chain in chains)
