"""The layers of the code: nodes/ <- protocols/ <- cluster/ <- experiments/, no import circle between modules and no
upward import (an import inside a function counts; one under `if TYPE_CHECKING:` does not), and the generic runtime
and pipeline modules name no family."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("nodes", "protocols", "cluster", "experiments")


def _modules() -> dict:
    out = {}
    for top in LAYERS:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: str, known: dict) -> set:
    tree = ast.parse(open(path).read())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known}


def graph() -> dict:
    mods = _modules()
    return {m: _imports(p, mods) - {m} for m, p in mods.items()}


def cycles(g: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_upward_import_and_no_circle():
    g = graph()
    rank = {top: i for i, top in enumerate(LAYERS)}
    upward = [(m, d) for m, deps in g.items() for d in deps if rank[d.split(".")[0]] > rank[m.split(".")[0]]]
    assert upward == []
    assert cycles(g) == []


def test_the_check_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# the runtime and engines (cluster/ but the truths), the pipeline, the config, the API and the command line
GENERIC = [f"experiments/{f}.py" for f in ("train", "audit", "hooks", "sweep", "compare", "config", "sections",
                                           "config_reference", "api", "__main__", "checkpoint", "recovery",
                                           "results")] + \
          [f"cluster/{f}" for f in os.listdir(os.path.join(ROOT, "cluster")) if f.endswith(".py")] + \
          [f"cluster/runtime/{f}" for f in os.listdir(os.path.join(ROOT, "cluster", "runtime")) if f.endswith(".py")]
FAMILY = re.compile(r"\b(rhel|heb|hep|aep|dyadic|leapfrog|hamilton\w*|echo\w*|cep|cvf)\b", re.I)


@pytest.mark.parametrize("path", GENERIC)
def test_generic_modules_name_no_family(path):
    hits = [line for line in open(os.path.join(ROOT, path)) if FAMILY.search(line)]
    assert hits == [], hits
