"""The design's rules, checked on the source: no import circle (lazy imports included) and no layer
name of a tlkeras model spelled outside the modules that build it."""

import ast
import os
import re

import tlkeras

PACKAGE = os.path.dirname(tlkeras.__file__)


def _modules(package: str = PACKAGE, root: str = "tlkeras") -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(package):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = root + "." + os.path.relpath(path, package)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def import_graph(package: str = PACKAGE, root: str = "tlkeras") -> dict[str, set[str]]:
    """{module: modules of `root` it imports anywhere in its body}, lazy imports included, as Python runs them:
    `from P import n` imports the submodule P.n when there is one (else reads n from P's __init__), and importing
    a module first runs every package above it - so an edge to `a.b.c` is also one to `a.b`, unless the importer
    is inside `a.b` itself (a package importing its own submodules, and they each other, is how packages work)."""
    modules = _modules(package, root)
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == root:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == root)
        deps = set()
        for target in targets:
            parts = target.split(".")
            for end in range(2, len(parts) + 1):  # the packages it runs on the way, then the module
                step = ".".join(parts[:end])
                if step == target or not (name == step or name.startswith(step + ".")):
                    deps.add(step)
        graph[name] = {d for d in deps if d in modules and d != name}
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


def _package(tmp_path, files: dict) -> str:
    for relative, text in files.items():
        path = tmp_path / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path / "pkg")


def test_the_graph_sees_a_circle_through_a_package(tmp_path):
    # model imports the package `kinds`, whose __init__ imports kinds.image, which imports model back (lazily):
    # the circle tlkeras had, which a graph that drops a package's edges to its own submodules does not see.
    package = _package(tmp_path, {
        "__init__.py": "",
        "model.py": "from pkg.kinds import get_kind\n",
        "kinds/__init__.py": "from pkg.kinds.image import Image\ndef get_kind(n): ...\n",
        "kinds/image.py": "class Image:\n    def f(self):\n        from pkg.model import build\n",
    })
    assert circles(import_graph(package, "pkg")) == [["pkg.kinds", "pkg.kinds.image", "pkg.model"]]


def test_the_graph_sees_a_package_run_by_importing_its_submodule(tmp_path):
    # a imports pkg.b.c: Python runs pkg/b/__init__.py first, which imports pkg.b.d, which imports a.
    package = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b.c import x\n",
        "b/__init__.py": "from pkg.b import d\n",
        "b/c.py": "x = 1\n",
        "b/d.py": "def f():\n    import pkg.a\n",
    })
    assert circles(import_graph(package, "pkg")) == [["pkg.a", "pkg.b", "pkg.b.d"]]


def test_a_package_importing_its_own_submodules_is_no_circle(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "kinds/__init__.py": "from pkg.kinds.image import Image\nfrom pkg.kinds.text import Text\n",
        "kinds/image.py": "from pkg.kinds.text import Text\nclass Image(Text): ...\n",
        "kinds/text.py": "class Text: ...\n",
        "user.py": "from pkg.kinds import Image\n",
    })
    assert circles(import_graph(package, "pkg")) == []


def lines_outside(owners, pattern, skip_examples: bool = True) -> list[str]:
    """"module:line: text" of every line of a tlkeras module outside `owners` (names, or packages ending in ".")
    whose code (comments dropped; doctest examples too, with `skip_examples`) matches `pattern`."""
    offenders = []
    for name, path in _modules().items():
        if any(name == owner.rstrip(".") or (owner.endswith(".") and name.startswith(owner)) for owner in owners):
            continue
        for number, line in enumerate(open(path, encoding="utf-8"), start=1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not (skip_examples and ">>>" in code):
                offenders.append(f"{name}:{number}: {line.strip()}")
    return offenders


# The owners of a tlkeras model's layer names: the model module and its read side, the layers module, the head and
# the backbone spec (which every source builds its base with).
OWNERS = {"tlkeras.model", "tlkeras.modelinfo", "tlkeras.layers", "tlkeras.heads", "tlkeras.backbones.spec"}
# Any get_layer call (a literal or a constant: the model's parts are read through tlkeras.modelinfo's accessors), and
# the names spelled out.
LAYER_NAMES = re.compile(r"""get_layer\(|name\s*=\s*["'](backbone|preprocess|head_pool|predictions)["']""")


def test_no_layer_name_is_spelled_outside_the_modules_that_build_the_model():
    assert lines_outside(OWNERS, LAYER_NAMES) == []


METHOD_BRANCH = re.compile(r"""method\s*[!=]=\s*["']|[!=]=\s*["'](full|lora|bitfit)["']|use_lora""")


def test_no_stage_2_method_is_branched_on_outside_the_methods():
    """Stage 2 asks its method (`tlkeras.methods`): a new one is a module and a registry line, not an `if`."""
    assert lines_outside({"tlkeras.methods."}, METHOD_BRANCH) == []


SCHEME_LITERAL = re.compile(r"""["'](hub|kerashub|auto):["']""")


def test_no_backbone_scheme_is_spelled_outside_the_backbone_sources():
    """A source says what it is (`tlkeras.backbones.BackboneSource`: its usage line, its own weights, what loading a
    model on it needs); nothing else compares a backbone name with "hub:", "kerashub:" or "auto:"."""
    assert lines_outside({"tlkeras.backbones."}, SCHEME_LITERAL, skip_examples=False) == []
