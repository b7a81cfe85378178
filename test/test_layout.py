"""The layering DESIGN.md describes, checked on the source: a module's layer is its package's, imports only look
down (or stay inside their own package), no module imports a script, no import cycle between modules, no file
outside test/ over 350 lines."""
import ast
import os

import pytest

from conftest import ROOT

SCRIPTS = {"train_vqgan", "train_transformer", "generate"}
# the layers, lowest first: a package (or module) may import only those before it, and its own package
# (datasets sit on core, below the models, which never import them: what a dataset decides reaches a model as an
# argument)
LAYERS = [("utils.core",), ("utils.data",), ("vqgan", "transformer"), ("utils.train",), ("utils.eval",),
          ("utils",), tuple(sorted(SCRIPTS))]
DATA, MODELS = LAYERS.index(("utils.data",)), LAYERS.index(("vqgan", "transformer"))
TOOLS = LAYERS.index(("utils",))  # the command-line tools: utils' own modules and utils.benchmark


def project_modules() -> dict[str, str]:
    mods = {}
    for pkg in ("vqgan", "transformer", "utils"):
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                    mods[rel.removesuffix(".__init__")] = os.path.join(d, f)
    for s in SCRIPTS:
        mods[s] = os.path.join(ROOT, f"{s}.py")
    return mods


def imports_of(path: str, mods: dict) -> set[str]:
    """Project modules imported anywhere in the file (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in mods}
    return out


def home(mod: str) -> tuple[int, str]:
    """(layer, package): the longest prefix of the module's name that names a layer's package."""
    for n in range(len(mod.split(".")), 0, -1):
        prefix = ".".join(mod.split(".")[:n])
        for layer, packages in enumerate(LAYERS):
            if prefix in packages:
                # a tool is a module of utils itself, or a package of its own there (utils.benchmark)
                tool = ".".join(mod.split(".")[:2]) if layer == TOOLS else prefix
                return layer, tool
    raise AssertionError(f"{mod} is in no layer")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """What breaks the layering in an import graph {module: the project modules it imports}: a script imported, an
    import that looks up (or across to another tool), a model that knows the datasets, an import cycle."""
    found = []
    for m, deps in graph.items():
        if deps & SCRIPTS:
            found.append(f"{m} imports the script(s) {sorted(deps & SCRIPTS)}")
        layer, package = home(m)
        for dep in deps:
            dep_layer, dep_package = home(dep)
            if not (dep_layer < layer or (dep_layer == layer and (dep_package == package or layer != TOOLS))):
                found.append(f"{m} ({'.'.join(LAYERS[layer])}) imports {dep} ({'.'.join(LAYERS[dep_layer])})")
            if layer == MODELS and dep_layer == DATA:
                found.append(f"{m} (a model) imports {dep}: models take what a dataset decides as arguments")
    state = {}  # no cycle: a depth-first search finds no back edge

    def visit(m, path):
        state[m] = "open"
        for dep in graph[m]:
            if state.get(dep) == "open":
                found.append("import cycle: " + " -> ".join(path + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [m])
    return found


def project_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(p, mods) - {m} for m, p in mods.items()}


def test_imports_only_look_down():
    assert violations(project_graph()) == []


@pytest.mark.parametrize("module, imports, what", [
    ("vqgan.model", "utils.train.loop", "imports utils.train.loop (utils.train)"),  # upward
    ("utils.data.shapes", "transformer.gpt", "imports transformer.gpt (vqgan.transformer)"),  # data below the models
    ("transformer.gpt", "utils.data.conditions", "(a model) imports utils.data.conditions"),  # a model knows data
    ("utils.eval.metrics", "generate", "imports the script(s) ['generate']"),
    ("utils.core.config", "utils.core.errors", "import cycle"),  # errors -> config added below
    ("utils.sample_eval", "utils.visualize", "imports utils.visualize (utils)"),  # one tool another
])
def test_the_layering_check_fails_on_a_probe_of_each_kind(module, imports, what):
    graph = project_graph()
    assert violations(graph) == []
    graph[module] = graph[module] | {imports}
    if what == "import cycle":
        graph["utils.core.errors"] = graph["utils.core.errors"] | {"utils.core.config"}
    assert any(what in v for v in violations(graph)), violations(graph)


def test_every_package_says_what_belongs_there():
    for d in ("utils", "utils/core", "utils/data", "utils/train", "utils/eval"):
        doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, d, "__init__.py")).read()))
        assert doc and len(doc) > 40, f"{d}/__init__.py has no docstring saying what lives there"


def test_no_long_files():
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x != "__pycache__" and
                   not (d == ROOT and x in ("test", "runs", "data"))]
        for f in files:
            if f.endswith(".py"):
                n = sum(1 for _ in open(os.path.join(d, f)))
                assert n <= 350, f"{os.path.relpath(os.path.join(d, f), ROOT)} has {n} lines"
