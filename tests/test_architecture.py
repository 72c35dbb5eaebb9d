"""The design's rules, checked on the source: no import circle (lazy imports included) and no layer
name of a tlkeras model spelled outside the modules that build it."""

import ast
import os
import re

import tlkeras

PACKAGE = os.path.dirname(tlkeras.__file__)


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = "tlkeras." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: tlkeras modules it imports anywhere in its body}; a package's import of its own
    submodules (and theirs of the package) is how packages work, not a circle."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlkeras"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("tlkeras"))
        graph[name] = {d for d in deps if d in modules and d != name and not d.startswith(name + ".")}
    return graph


def circles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_there_is_no_import_circle():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The owners of a tlkeras model's layer names: the model module, the layers module, the head and
# the backbone spec (which every source builds its base with).
OWNERS = {"tlkeras.model", "tlkeras.layers", "tlkeras.heads", "tlkeras.backbones.spec"}
LAYER_NAMES = re.compile(r"""get_layer\(\s*["']|name\s*=\s*["'](backbone|preprocess|head_pool|predictions)["']""")


def test_no_layer_name_is_spelled_outside_the_modules_that_build_the_model():
    offenders = []
    for name, path in _modules().items():
        if name in OWNERS:
            continue
        for number, line in enumerate(open(path, encoding="utf-8"), start=1):
            code = line.split("#", 1)[0]
            if LAYER_NAMES.search(code) and ">>>" not in code:
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []
