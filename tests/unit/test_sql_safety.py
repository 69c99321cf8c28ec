"""No SQL is built from strings: values travel as bind parameters (SQLAlchemy Core statements or
text() with :params), never formatted into the statement.

The scan parses every product module and flags each f-string, %-format, str.format or
concatenation whose literal parts look like SQL, wherever it is (a statement built in one
function may be executed in another). The few that remain were reviewed: they format only
constants of the code, or identifiers PostgreSQL accepts no parameter for, never input. A new
finding must be rewritten with bind parameters or added here with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("steelcore", "producers", "workers", "dashboard", "stack", "training", "benchmarks")
SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|GRANT|REVOKE|SET|EXPLAIN|TRUNCATE|COPY|LOCK|"
    r"VACUUM|WITH|DO \$\$)\b|\b(FROM|WHERE|VALUES|ON CONFLICT|INTO)\b"
)
_MIGRATION_0004 = "steelcore/postgres/migrations/versions/0004_frames_partitioned.py"
REVIEWED: dict[tuple[str, str], str] = {
    (
        "steelcore/postgres/roles.py",
        "ensure_roles",
    ): "role names are the module's constants; DDL takes no parameters",
    ("steelcore/postgres/roles.py", "_create_role_sql"): "role names are the module's constants",
    ("steelcore/postgres/roles.py", "ensure_dashboard_roles"): "role names are the module's constants",
    ("steelcore/postgres/engine.py", "_read_only"): "SET takes no parameters; the timeout is a constant int",
    ("steelcore/postgres/defect_history.py", "explain_plan"): "EXPLAIN of a compiled Core statement; "
    "values stay bound",
    ("steelcore/postgres/storage_sizes.py", "table_sizes"): "table names checked against the schema's "
    "tables; size functions take no parameter for a name",
    ("steelcore/postgres/scratch.py", "scratch_database"): "a generated database name (uuid), never input",
    ("steelcore/postgres/synthetic_history.py", "<module>"): "seed statements from the module's integer "
    "constants",
    ("steelcore/postgres/partitions.py", "create_ahead"): "partition names and bounds from the code's own "
    "dates, the lock timeout a constant; DDL takes no parameters",
    ("steelcore/postgres/partitions.py", "drop_before"): "partition names read from the catalog; DDL takes "
    "no parameters; values stay bound",
    (_MIGRATION_0004, "_create_week"): "partition names and "
    "bounds from the migration's own dates; DDL takes no parameters",
    (_MIGRATION_0004, "upgrade"): "the column list is a constant",
    (_MIGRATION_0004, "downgrade"): "the column list is a constant",
}


def literal_text(node: ast.AST) -> str | None:
    """The literal parts of a string built at run time (None for anything else)."""
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        parts = [
            n.value
            for n in (node.left, node.right)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        return "".join(parts) or None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    ):
        return node.func.value.value
    return None


def dynamic_sql(source: str) -> list[tuple[str, int, str]]:
    """(enclosing function or '<module>', line, literal text) of each SQL string built at run time."""
    tree = ast.parse(source)
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            text = literal_text(child)
            if text is not None and SQL.search(text):
                found.append((function, child.lineno, text))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_the_scan_finds_sql_built_from_strings() -> None:
    source = (
        "def f(conn, name, table):\n"
        "    conn.execute(text(f\"SELECT * FROM frames WHERE frame_id = '{name}'\"))\n"
        "    q = 'DELETE FROM ' + table\n"
        "    r = 'UPDATE x SET y = %s' % name\n"
        "    s = 'INSERT INTO t VALUES ({})'.format(name)\n"
        "    conn.execute(text('SELECT * FROM frames WHERE frame_id = :id'), {'id': name})\n"
        "    log.info(f'stored {name} frames')\n"
    )
    assert [(fn, line) for fn, line, _ in dynamic_sql(source)] == [("f", 2), ("f", 3), ("f", 4), ("f", 5)]


def test_no_sql_is_built_from_strings_outside_the_reviewed_exceptions() -> None:
    findings: dict[tuple[str, str], list[str]] = {}
    for package in PRODUCT_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            where = str(path.relative_to(REPO_ROOT))
            for function, line, text in dynamic_sql(path.read_text()):
                findings.setdefault((where, function), []).append(f"{where}:{line} {text.strip()[:60]!r}")
    unreviewed = [hit for key, hits in findings.items() if key not in REVIEWED for hit in hits]
    assert not unreviewed, "SQL built from strings (use bind parameters):\n" + "\n".join(unreviewed)
    stale = sorted(set(REVIEWED) - set(findings))
    assert not stale, f"reviewed exceptions that no longer occur (remove them): {stale}"
