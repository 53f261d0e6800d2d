"""What a SQL statement does, read from its text: operation, main table, and a normalised form.

The results are cached per statement text: SQLAlchemy hands the same compiled string object to every
execution of a cached statement, so a lookup costs one dict probe.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

_LEADING = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*\(?\s*([A-Za-z]+)", re.S)
_IDENT = r'("(?:[^"]|"")+"|[A-Za-z_][\w$]*)(?:\s*\.\s*("(?:[^"]|"")+"|[A-Za-z_][\w$]*))?'
_DML = re.compile(
    r"(?<![\w$])(?:(INSERT)\s+INTO|(DELETE)\s+FROM|(?<!FOR\s)(?<!DO\s)(?<!KEY\s)(UPDATE)(?:\s+ONLY)?)\s+"
    + _IDENT,
    re.I,
)
_FROM = re.compile(
    r"(?<![\w$])(?:FROM|INTO|TABLE|JOIN)\s+(?:ONLY\s+)?" + "(?>" + _IDENT + r")(?!\s*\()", re.I
)
_NOT_TABLES = frozenset({"set", "of", "nowait", "skip", "select", "lateral", "unnest", "only"})

# Literals: dollar-quoted and quoted strings (E'' and U&'' too), then numbers not part of a name or $n.
_LITERALS = re.compile(
    r"""(\$(?:[A-Za-z_]\w*)?\$).*?\1"""  # $$...$$, $tag$...$tag$
    r"""|(?:\b[EeUu]&?|\b[Bb]|\b[Xx])?'(?:[^']|'')*'"""  # '...', E'...', B'...', X'...'
    r"""|(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w$])""",  # 42, 3.14, 1e-3 (not $1, not t1)
    re.S,
)
_SPACE = re.compile(r"\s+")
_PLACEHOLDER_LIST = re.compile(r"\(\s*(?:\?|\$\d+)(?:\s*,\s*(?:\?|\$\d+))+\s*\)")

MAX_STATEMENT_CHARS = 4000


class StatementInfo(NamedTuple):
    operation: str
    table: str | None
    normalised: str


@functools.lru_cache(maxsize=4096)
def describe(statement: str) -> StatementInfo:
    """Operation keyword (upper case), main table (unquoted, without schema) and normalised text."""
    lead = _LEADING.match(statement)
    operation = lead.group(1).upper() if lead else "UNKNOWN"
    table: str | None = None
    if operation in ("WITH", "INSERT", "UPDATE", "DELETE", "MERGE"):
        dml = _DML.search(statement)
        if dml is not None:
            operation = (dml.group(1) or dml.group(2) or dml.group(3)).upper()
            table = _name(dml.group(4), dml.group(5))
        elif operation == "WITH":
            operation = "SELECT"
    if table is None and operation in ("SELECT", "COPY", "TRUNCATE", "LOCK", "VACUUM", "ANALYZE"):
        for match in _FROM.finditer(statement):
            name = _name(match.group(1), match.group(2))
            if name.lower() not in _NOT_TABLES:
                table = name
                break
    return StatementInfo(operation, table, normalise(statement))


def normalise(statement: str) -> str:
    """The statement with every literal replaced by `?` and whitespace collapsed; values never survive."""
    text = _LITERALS.sub("?", statement)
    text = _SPACE.sub(" ", text).strip()
    text = _PLACEHOLDER_LIST.sub("(?, ...)", text)
    if len(text) > MAX_STATEMENT_CHARS:
        text = text[:MAX_STATEMENT_CHARS] + " ..."
    return text


def _name(first: str, second: str | None) -> str:
    raw = second if second is not None else first  # schema.table -> table
    return raw[1:-1].replace('""', '"') if raw.startswith('"') else raw
