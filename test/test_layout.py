"""The layering the README describes, checked on the source: imports only look down, no module imports a script,
no import cycle between modules, no file outside test/ over 350 lines."""
import ast
import os

from conftest import ROOT

SCRIPTS = {"train_vqgan", "train_transformer", "generate"}
# imported by the models: errors, checkpoint files, the config machinery; no project imports but each other
LEAVES = {"utils.errors", "utils.checkpoint", "utils.config"}
TOOLS = {"utils.visualize", "utils.reconstruct", "utils.convert_taming", "utils.sample_eval"}


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


def layer(mod: str) -> int:
    if mod in LEAVES:
        return 0
    if mod.split(".")[0] in ("vqgan", "transformer"):
        return 1  # models, their configs, their loading from a checkpoint
    if mod in SCRIPTS or mod in TOOLS or mod.startswith("utils.benchmark"):
        return 3  # the scripts and the tools
    return 2  # training mechanics: config, data, distributed, logging, metrics, precision, training


def test_imports_only_look_down():
    mods = project_modules()
    graph = {m: imports_of(p, mods) - {m} for m, p in mods.items()}
    for m, deps in graph.items():
        assert not (deps & SCRIPTS), f"{m} imports the script(s) {sorted(deps & SCRIPTS)}"
        for dep in deps:
            same_tool = layer(m) == 3 and dep.startswith(m.rsplit(".", 1)[0])  # a tool package's own modules
            assert layer(dep) < layer(m) or (layer(dep) == layer(m) < 3) or same_tool, \
                f"{m} (layer {layer(m)}) imports {dep} (layer {layer(dep)})"
    # no cycle: a depth-first search finds no back edge
    state = {}

    def visit(m, path):
        state[m] = "open"
        for dep in graph[m]:
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_long_files():
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("test", "runs", "data", "__pycache__")]
        for f in files:
            if f.endswith(".py"):
                n = sum(1 for _ in open(os.path.join(d, f)))
                assert n <= 350, f"{os.path.relpath(os.path.join(d, f), ROOT)} has {n} lines"
