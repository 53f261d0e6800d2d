"""What a revision's downgrade() removes, read from its source for `rollback`'s confirmation (best effort)."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

from alembic.script import Script

_DROP_SQL = re.compile(
    r"\b(?:DROP\s+(?:TABLE|VIEW|COLUMN|INDEX|FUNCTION|TRIGGER|CONSTRAINT|TYPE)|DELETE\s+FROM)\s+(?:IF\s+EXISTS\s+)?\w+",
    re.I,
)
_Bindings = dict[str, tuple[str, ...]]


def _values(node: ast.expr, module: object, bound: _Bindings) -> tuple[str, ...]:
    """The string(s) an argument stands for: a literal, `op.f(literal)`, a module constant, or a
    loop variable over a literal tuple; ("?",) when the source does not say."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, ast.Call) and node.args and getattr(node.func, "attr", None) == "f":
        return _values(node.args[0], module, bound)
    if isinstance(node, ast.Name):
        if node.id in bound:
            return bound[node.id]
        value = getattr(module, node.id, None)
        if isinstance(value, str):
            return (value,)
    return ("?",)


def _loop_bindings(loop: ast.For) -> _Bindings:
    """`for name in ("a", "b")` / `for name, x in (("a", ...), ...)`: name -> the literal values."""
    target = loop.target.elts[0] if isinstance(loop.target, ast.Tuple) else loop.target
    if not isinstance(target, ast.Name) or not isinstance(loop.iter, ast.Tuple):
        return {}
    items = [
        e.elts[0] if isinstance(loop.target, ast.Tuple) and isinstance(e, ast.Tuple) else e
        for e in loop.iter.elts
    ]
    if not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items):
        return {}
    return {target.id: tuple(str(e.value) for e in items if isinstance(e, ast.Constant))}


def _sql_drops(sql: str) -> list[str]:
    """ "DROP TABLE x" -> "table x", "DELETE FROM t" -> "rows of t"."""
    out = []
    for match in _DROP_SQL.finditer(sql):
        words = [w for w in match.group(0).split() if w.upper() not in {"IF", "EXISTS"}]
        kind = "rows of" if words[0].upper() == "DELETE" else words[1].lower()
        out.append(f"{kind} {words[-1]}")
    return out


def drops_of(script: Script) -> tuple[str, ...]:
    """What the revision's downgrade() removes, as far as its source shows it (best effort): the
    `op.drop_*` calls with their literal arguments and the DROP/DELETE statements in its SQL."""
    module = script.module
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(module.downgrade)))
    except (AttributeError, OSError, TypeError, SyntaxError):
        return ()
    found: list[str] = []

    def visit(node: ast.AST, bound: _Bindings) -> None:
        if isinstance(node, ast.For):
            bound = {**bound, **_loop_bindings(node)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if (
                name.startswith("drop_")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "op"
            ):
                what = name.removeprefix("drop_")
                args = [_values(a, module, bound) for a in node.args[:2]]
                if what == "column" and len(args) == 2:
                    found.extend(f"column {t}.{c}" for t in args[0] for c in args[1])
                elif args:
                    found.extend(f"{what} {v}" for v in args[0])
            elif name == "delete":
                found.append("rows it inserted (see its description)")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.extend(_sql_drops(node.value))
        if isinstance(node, ast.JoinedStr):
            literal = "".join(
                v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
            found.extend(_sql_drops(literal))
            return
        for child in ast.iter_child_nodes(node):
            visit(child, bound)

    visit(tree, {})
    return tuple(dict.fromkeys(found))
