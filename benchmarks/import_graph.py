"""The shape of slidewatch's import graph (grimp, the graph import-linter checks), as one JSON
line: top-level packages and modules, modules, direct imports, import cycles between modules
(0 expected), and the longest import chain, between modules and between top-level packages.

    python benchmarks/import_graph.py

``tests/test_layout.py`` loads this file for ``import_cycles`` and ``longest_chain``.
"""

from __future__ import annotations

import json
from functools import cache

PACKAGE = "slidewatch"


def import_graph(package: str = PACKAGE) -> dict[str, list[str]]:
    """``{module: sorted modules of the package it imports directly}``: every import, at module
    level or inside a function."""
    import grimp

    graph = grimp.build_graph(package, cache_dir=None)
    return {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}


def import_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per back edge of a depth-first search: empty iff acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []
    for root in graph:
        if root in state:
            continue
        state[root], path, todo = 1, [root], [iter(graph[root])]
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(graph.get(nxt, ())))
    return cycles


def longest_chain(graph: dict[str, list[str]]) -> list[str]:
    """The longest path ``a -> b -> ...`` (a imports b) of an acyclic graph; the first in sorted
    order among the longest."""
    if import_cycles(graph):
        raise ValueError("the graph has cycles: no longest simple chain computed")

    @cache
    def from_(m: str) -> tuple[str, ...]:
        tails = [from_(n) for n in graph.get(m, ())]
        return (m, *max(tails, key=len, default=()))

    return list(max((from_(m) for m in sorted(graph)), key=len, default=()))


def top_level(graph: dict[str, list[str]], package: str = PACKAGE) -> dict[str, list[str]]:
    """The graph between the package's direct children (``slidewatch.data`` for every module
    under it); imports within one child are dropped."""
    def head(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {head(m): set() for m in graph if m != package}
    for m, imported in graph.items():
        if m == package:
            continue
        out[head(m)].update(head(n) for n in imported if n != package and head(n) != head(m))
    return {m: sorted(v) for m, v in sorted(out.items())}


def summary(package: str = PACKAGE) -> dict:
    graph = import_graph(package)
    tops = top_level(graph, package)
    chain, top_chain = longest_chain(graph), longest_chain(tops)
    packages = sorted(t for t in tops if any(m.startswith(t + ".") for m in graph))
    return {"package": package, "top_level": len(tops), "top_level_names": sorted(tops),
            "top_level_packages": len(packages),
            "top_level_modules": sorted(set(tops) - set(packages)),
            "modules": len(graph), "imports": sum(map(len, graph.values())),
            "cycles": len(import_cycles(graph)),
            "longest_chain": {"modules": len(chain), "imports": len(chain) - 1, "chain": chain},
            "longest_top_level_chain": {"modules": len(top_chain), "chain": top_chain}}


if __name__ == "__main__":
    print(json.dumps(summary()))
