"""No closure in engine/ reads a name that its enclosing function binds again.

A lambda handed to a replica as its ISR writer read ``epoch``, which a loop further
down the same function rebound to producer epochs: every ISR change after that was
written with the wrong epoch and refused. This scan finds that shape anywhere in the
package (a name read by a nested function or lambda, bound more than once in the
enclosing function, or bound after the closure is made)."""

from __future__ import annotations

import ast
from pathlib import Path

import engine

PACKAGE = Path(engine.__file__).parent
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _bindings(function: ast.AST) -> dict[str, list[int]]:
    """Lines where ``function`` itself (not a nested scope) binds each name."""
    out: dict[str, list[int]] = {}

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (*_SCOPES, *_COMPREHENSIONS)):
                continue  # a scope of its own
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                out.setdefault(child.id, []).append(child.lineno)
            visit(child)

    visit(function)
    return out


def rebound_closure_reads(source: str, filename: str) -> list[str]:
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        bound = _bindings(function)
        for inner in ast.walk(function):
            if inner is function or not isinstance(inner, _SCOPES):
                continue
            params = {a.arg for a in ast.walk(inner.args) if isinstance(a, ast.arg)}
            names = [n for n in ast.walk(inner) if isinstance(n, ast.Name)]
            reads = {n.id for n in names if isinstance(n.ctx, ast.Load)}
            own = {n.id for n in names if isinstance(n.ctx, ast.Store)}  # its own locals
            for name in sorted(reads - params - own):
                lines = bound.get(name, [])
                if len(lines) > 1 or any(line > inner.lineno for line in lines):
                    found.append(f"{filename}:{inner.lineno}: reads {name!r}, bound at {lines}")
    return found


def test_the_scan_finds_a_closure_over_a_name_a_later_loop_rebinds() -> None:
    source = (
        "def start(state, epochs):\n"
        "    epoch = state.leader_epoch\n"
        "    write = lambda isr: save(epoch, isr)\n"
        "    for pid, epoch in epochs:\n"
        "        fence(pid, epoch)\n"
        "    return write\n"
    )
    assert rebound_closure_reads(source, "x.py") == ["x.py:3: reads 'epoch', bound at [2, 4]"]


def test_no_closure_in_the_engine_reads_a_name_bound_again() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += rebound_closure_reads(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert found == []
