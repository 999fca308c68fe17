"""Sharding the refresh-token families by family_id (docs/scaling.md): every SQL statement that
touches a table distributed by family_id is routed to one shard, or is a named fan-out.

The statements are found, not listed: every string literal in server/**/*.py (adjacent and ``+``
concatenations and f-strings joined, module-level string constants put in), and every statement
in the bodies of the SQL functions that the migrations leave defined. A statement "touches" the
families if it names a table distributed by family_id, calls a SQL function that does, or deletes
from a table whose rows those tables reference ON DELETE CASCADE. Each reference to such a table is
judged on its own query level:

- single shard: ``family_id = $n`` (or ``= <variable>``), or an INSERT whose column list holds
  family_id: Citus routes it to the one shard that holds the family;
- keyed batch: ``family_id`` matched against the rows of ``unnest(...)`` of array parameters
  (or ``= ANY($n)``): each row is found by family_id, but one statement spans the shards of its
  rows; named in ``ALLOWED`` with the reason;
- fan-out: anything else; named in ``ALLOWED`` with the reason.

A statement added later that is neither routed nor named makes ``test_every_statement_is_routed``
fail, and so does a name in ``ALLOWED`` that no statement matches any longer. The routed statements
are then EXPLAINed (generic plans) on real PostgreSQL: each reads refresh_families through its
primary key.
"""

from __future__ import annotations

import ast
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server"
MIGRATIONS = SERVER / "store" / "migrations"

# The tables distributed by family_id, colocated (docs/scaling.md). Every table with a family_id
# column must be here or in NOT_DISTRIBUTED_BY_FAMILY.
DISTRIBUTED_BY_FAMILY = ("refresh_families", "security_events")
NOT_DISTRIBUTED_BY_FAMILY = {
    # Found by code_hash at every use (issue, redeem); family_id only points at the family a
    # redemption made, to revoke it if the code comes back. Distributed by code_hash on its own.
    "authorization_codes": "read and written by code_hash; family_id is a pointer, not its key",
}

# The statements that are not single-shard, each named by (file, a piece of its text) with its kind
# and the reason it is fine. Files are relative to the repository; a migration's function is named
# by its file and the function's name.
ALLOWED: list[tuple[str, str, str, str]] = [
    # (file, piece of the statement, kind, reason)
    ("server/store/migrations/*.sql", "function tessera_rotate_families_waiting:", "keyed batch",
     "group commit of the rotations in flight: every row is found by family_id through the primary"
     " key; on Citus the batcher sends one batch per shard (group by the family's shard), so each"
     " statement stays on one shard"),
    ("server/store/migrations/*.sql", "function tessera_rotate_families:", "keyed batch",
     "the batch above, giving up past its lock_timeout"),
    ("server/store/migrations/*.sql", "function tessera_rotate_families_before:", "keyed batch",
     "the batch above, with the requests' deadlines"),
    ("server/store/migrations/*.sql", "function tessera_rotate_families_waiting_before:", "keyed batch",
     "the batch above, waiting for locks, with the requests' deadlines"),
    ("server/store/rotation_batch.py", "tessera_rotate_families_before(", "keyed batch",
     "the batch above, called with its deadline"),
    ("server/store/rotation_batch.py", "tessera_rotate_families_waiting_before(", "keyed batch",
     "the batch above, retried row by row (a batch of one row is a single-shard statement)"),
    ("server/store/migrations/*.sql", "function tessera_redeem_codes_waiting:", "keyed batch",
     "group commit of authorization-code redemptions: each code redeemed starts its family, an"
     " INSERT carrying that family's id, so every row goes to its family's shard; on Citus the"
     " batcher groups the codes by the shard of the family it will make (the family id is chosen"
     " before the statement), or sends them one by one: once per sign-in, not per refresh"),
    ("server/store/migrations/*.sql", "function tessera_redeem_codes:", "keyed batch",
     "the batch above, giving up past its lock_timeout"),
    ("server/store/migrations/*.sql", "function tessera_redeem_codes_before:", "keyed batch",
     "the batch above, with the requests' deadlines"),
    ("server/store/migrations/*.sql", "function tessera_redeem_codes_waiting_before:", "keyed batch",
     "the batch above, waiting for locks, with the requests' deadlines"),
    ("server/store/sign_in.py", "tessera_redeem_codes_before(", "keyed batch", "the code batch above"),
    ("server/store/sign_in.py", "tessera_redeem_codes_waiting_before(", "keyed batch",
     "the code batch above, retried row by row (one row: one shard for the family)"),
    ("server/store/families.py", "WHERE {column} = $1", "fan-out",
     "revoke every family of a user or a client (disable, password change, client change,"
     " `tessera sessions revoke --user/--client`): rare, administrative, and an index scan on"
     " user_id / client_id on every shard in parallel"),
    ("server/store/families.py", "WHERE client_id = $1 AND revoked_at IS NULL AND (NOT scopes", "fan-out",
     "a client narrowed by a clients file: its families that hold more than it now allows are"
     " revoked, in the transaction that narrows it; administrative, an index scan on client_id on"
     " every shard"),
    ("server/store/families.py", "pg_relation_size('refresh_families')", "fan-out",
     "the janitor's sweep: the size of the table in pages (on Citus, per shard)"),
    ("server/store/families.py", "DELETE FROM refresh_families  WHERE ctid", "fan-out",
     "the janitor's sweep of dead families by heap pages: background, bounded per statement; on"
     " Citus run on each shard (run_command_on_shards), so every worker sweeps its own"),
    ("server/store/families.py", "DELETE FROM security_events WHERE event_id IN", "fan-out",
     "the janitor's deletion of old security events: background, bounded per statement"),
    ("server/store/sign_in.py", "WHERE login_session_id = $1", "fan-out",
     "/logout revokes the families of one sign-in: one statement per logout, an index scan on"
     " login_session_id (partial, non-NULL only) on every shard"),
    ("server/store/users.py", "DELETE FROM users", "fan-out",
     "deleting a user cascades to its families (ON DELETE CASCADE from a reference table):"
     " administrative and rare"),
    ("server/store/clients.py", "DELETE FROM clients", "fan-out",
     "deleting a client cascades to its families (ON DELETE CASCADE from a reference table):"
     " administrative and rare"),
]

SINGLE, BATCH, FAN_OUT = "single shard", "keyed batch", "fan-out"
RANK = {SINGLE: 0, BATCH: 1, FAN_OUT: 2}


# --- SQL text ----------------------------------------------------------------------------------------


def strip_comments(sql: str) -> str:
    """SQL without -- and /* */ comments (string literals are kept as they are)."""
    out, i, quoted = [], 0, False
    while i < len(sql):
        c = sql[i]
        if c == "'":
            quoted = not quoted
        if not quoted and sql.startswith("--", i):
            i = sql.find("\n", i)
            if i < 0:
                break
            continue
        if not quoted and sql.startswith("/*", i):
            i = sql.find("*/", i) + 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def normal(sql: str) -> str:
    lines = [line for line in strip_comments(sql).splitlines() if not line.strip().startswith("#")]
    return re.sub(r"\s+", " ", " ".join(lines)).strip().lower()


def flatten(text: str) -> str:
    """``text`` with every parenthesised group at depth 1 or more replaced by ``(…)``: what is left is
    one query level."""
    out, depth = [], 0
    for c in text:
        if c == "(":
            if depth == 0:
                out.append("(…)")
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0:
            out.append(c)
    return "".join(out)


def level_of(sql: str, at: int) -> str:
    """The query level the text at ``at`` is on: from the opening parenthesis around it (or the
    start) to its closing one (or the end), nested groups flattened."""
    depth, start = 0, 0
    for i in range(at - 1, -1, -1):
        if sql[i] == ")":
            depth += 1
        elif sql[i] == "(":
            if depth == 0:
                start = i + 1
                break
            depth -= 1
    depth, end = 0, len(sql)
    for i in range(at, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            if depth == 0:
                end = i
                break
            depth -= 1
    return flatten(sql[start:end])


def split_statements(body: str) -> list[str]:
    """A function body's statements, split at semicolons outside quotes and parentheses."""
    parts, current, depth, quoted = [], [], 0, False
    for c in body:
        if c == "'":
            quoted = not quoted
        if not quoted:
            depth += c == "("
            depth -= c == ")"
            if c == ";" and depth == 0:
                parts.append("".join(current))
                current = []
                continue
        current.append(c)
    parts.append("".join(current))
    return [p for p in (normal(p) for p in parts) if p]


# --- the schema, from the migrations ---------------------------------------------------------------


@dataclass
class Function:
    name: str
    where: str
    params: dict[str, str]  # name -> type, in order
    statements: list[str]


def migration_texts() -> list[tuple[str, str]]:
    return [(f"server/store/migrations/{p.name}", p.read_text()) for p in sorted(MIGRATIONS.glob("*.sql"))]


def schema() -> tuple[dict[str, Function], set[str], set[str]]:
    """(the SQL functions left defined, the tables with a family_id column, the tables whose
    deletes cascade into a table distributed by family_id)."""
    functions: dict[str, Function] = {}
    with_family_id: set[str] = set()
    cascade_parents: set[str] = set()
    create = re.compile(
        r"create\s+(?:or\s+replace\s+)?function\s+(\w+)\s*\((.*?)\)\s*returns\b.*?\bas\s+(\$\w*\$)(.*?)\3",
        re.S | re.I)
    drop = re.compile(r"drop\s+function\s+(?:if\s+exists\s+)?(\w+)", re.I)
    table = re.compile(r"create\s+table\s+(?:if\s+not\s+exists\s+)?(\w+)\s*\(", re.I)
    alter = re.compile(r"alter\s+table\s+(?:only\s+)?(\w+)\b(.*?);", re.S | re.I)
    for where, text in migration_texts():
        text = strip_comments(text)
        events = [(m.start(), "create", m) for m in create.finditer(text)]
        events += [(m.start(), "drop", m) for m in drop.finditer(text)]
        for _, kind, m in sorted(events, key=lambda e: e[0]):
            if kind == "drop":
                functions.pop(m.group(1).lower(), None)
                continue
            params = {}
            for param in filter(None, (p.strip() for p in m.group(2).split(","))):
                name, _, kind_of = param.partition(" ")
                params[name.lower()] = kind_of.split(" default ")[0].strip().lower()
            functions[m.group(1).lower()] = Function(m.group(1).lower(), where, params, split_statements(m.group(4)))
        for m in table.finditer(text):
            body = level_of(text, m.end())  # the column list, nested groups flattened
            if re.search(r"(?:^|,)\s*family_id\s+[a-z]", body, re.I | re.M):
                with_family_id.add(m.group(1).lower())
            if m.group(1).lower() in DISTRIBUTED_BY_FAMILY:
                for parent in re.findall(r"references\s+(\w+)[^,]*?on\s+delete\s+cascade", body, re.I):
                    cascade_parents.add(parent.lower())
        for m in alter.finditer(text):
            if re.search(r"add\s+column\s+(?:if\s+not\s+exists\s+)?family_id\b", m.group(2), re.I):
                with_family_id.add(m.group(1).lower())
            if m.group(1).lower() in DISTRIBUTED_BY_FAMILY:
                for parent in re.findall(r"references\s+(\w+)[^,]*?on\s+delete\s+cascade", m.group(2), re.I):
                    cascade_parents.add(parent.lower())
    return functions, with_family_id, cascade_parents


# --- the statements in the server's Python -----------------------------------------------------------


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _render(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The text of a string expression: literals, f-strings and ``+`` of them; a module-level string
    constant put in; any other expression as ``{expr}``. None if ``node`` is not a string expression."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                inner = value.value
                parts.append(constants[inner.id] if isinstance(inner, ast.Name) and inner.id in constants
                             else "{" + ast.unparse(inner) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render_part(node.left, constants), _render_part(node.right, constants)
        if left is None or right is None or (left.startswith("{") and right.startswith("{")):
            return None
        return left + right
    return None


def _render_part(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return constants.get(node.id, "{" + node.id + "}")
    return _render(node, constants)


@dataclass
class Statement:
    where: str  # the file, relative to the repository (with the line, or the function)
    file: str
    sql: str  # normalised


def python_statements() -> list[Statement]:
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        skip = _docstrings(tree)
        constants: dict[str, str] = {}
        for node in tree.body:  # module-level string constants, in order
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                text = _render(node.value, constants)
                if text is not None:
                    constants[node.targets[0].id] = text
        inside: set[int] = set()
        for node in ast.walk(tree):
            if id(node) in inside or id(node) in skip:
                continue
            if isinstance(node, ast.Constant | ast.JoinedStr | ast.BinOp):
                text = _render(node, constants)
                if text is None:
                    continue
                for child in ast.walk(node):
                    inside.add(id(child))
                relative = str(path.relative_to(ROOT))
                found.append(Statement(f"{relative}:{node.lineno}", relative, normal(text)))
    return found


# --- judging ------------------------------------------------------------------------------------------

SQL_WORD = re.compile(r"\b(select|insert|update|delete|from|where|into|returning|join)\b")


@dataclass
class Verdict:
    kind: str
    why: str


def judge(sql: str, functions: dict[str, Function], cascade_parents: set[str],
          params: dict[str, str] | None = None, seen: frozenset[str] = frozenset()) -> Verdict | None:
    """How a statement that touches the families is routed; None if it does not touch them."""
    verdicts: list[Verdict] = []
    tables = "|".join(DISTRIBUTED_BY_FAMILY)
    reference = re.compile(
        rf"\b(from|update|into|join|using)\s+(?:only\s+)?({tables})\b"
        r"(?:\s+(?:as\s+)?(?!where\b|set\b|on\b|using\b|returning\b|join\b|inner\b|left\b|group\b|order\b"
        r"|limit\b|for\b|values\b|select\b|default\b)([a-z_]\w*))?")
    covered = set()
    for m in reference.finditer(sql):
        covered.add(m.start(2))
        verdicts.append(_judge_reference(sql, m, params or {}))
    for m in re.finditer(rf"\b({tables})\b", sql):
        if m.start() not in covered:
            verdicts.append(Verdict(FAN_OUT, f"{m.group(1)} named outside FROM/UPDATE/INTO/JOIN"))
    for parent in cascade_parents:
        if re.search(rf"\b(delete\s+from|truncate)\s+(?:only\s+)?{parent}\b", sql):
            verdicts.append(Verdict(FAN_OUT, f"a delete from {parent} cascades to the families"))
    for name, function in functions.items():
        if name in seen or not re.search(rf"\b{name}\s*\(", sql):
            continue
        inner = [judge(s, functions, cascade_parents, function.params, seen | {name}) for s in function.statements]
        worst = max((v for v in inner if v is not None), key=lambda v: RANK[v.kind], default=None)
        if worst is not None:
            verdicts.append(Verdict(worst.kind, f"calls {name}: {worst.why}"))
    if not verdicts:
        return None
    return max(verdicts, key=lambda v: RANK[v.kind])


def _judge_reference(sql: str, m: re.Match[str], params: dict[str, str]) -> Verdict:
    verb, table, alias = m.group(1), m.group(2), m.group(3)
    if verb == "into":
        return _judge_insert(sql, m, params)
    level = level_of(sql, m.start(2))
    unnested = set(re.findall(r"\bunnest\(…\)\s+(?:as\s+)?([a-z_]\w*)", level))
    names = {table} | ({alias} if alias else set())
    column = rf"(?<![\w.])(?:(?:{'|'.join(sorted(names))})\.)?family_id"
    value = r"(\$\d+(?:::\w+)?|any\s*\(…\)|[a-z_]\w*(?:\.[a-z_]\w*)?)"
    for found in [*re.finditer(rf"{column}\s*=\s*{value}", level),
                  *re.finditer(rf"{value}\s*=\s*{column}(?!\w)", level)]:
        other = found.group(1)
        if other.startswith("$"):
            return Verdict(SINGLE, f"{table}: family_id = {other}")
        if other.startswith("any"):
            return Verdict(BATCH, f"{table}: family_id = ANY(array)")
        if "." in other and other.split(".")[0] in unnested:
            return Verdict(BATCH, f"{table}: family_id matched against unnest(...) rows")
        if other in params and not params[other].endswith("[]"):
            return Verdict(SINGLE, f"{table}: family_id = {other} (a parameter)")
    return Verdict(FAN_OUT, f"{table}: no family_id predicate on its level")


def _top_level_items(text: str) -> list[str]:
    """``text`` split at its commas outside parentheses."""
    items, current, depth = [], [], 0
    for c in text:
        depth += c == "("
        depth -= c == ")"
        if c == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(c)
    items.append("".join(current).strip())
    return items


def _judge_insert(sql: str, m: re.Match[str], params: dict[str, str]) -> Verdict:
    """An INSERT is routed if it carries family_id, as one value: a parameter ($n, or a scalar
    parameter of the function). A family_id taken from other rows is one shard per row: a batch if
    those rows come from arrays (unnest, or an array parameter), else the rows of a statement that
    is judged on its own (a routed UPDATE's RETURNING, say)."""
    table = m.group(2)
    rest = sql[m.end(2):]
    columns = re.match(r"\s*\(([^)]*)\)", rest)
    names = [c.strip() for c in columns.group(1).split(",")] if columns else []
    if "family_id" not in names:
        return Verdict(FAN_OUT, f"insert into {table} without family_id")
    assert columns is not None
    source = rest[columns.end():].strip()
    values: list[str] = []
    if source.startswith("values"):
        groups = re.findall(r"\(", flatten(source.split(" returning ")[0]))
        if len(groups) > 1:
            return Verdict(BATCH, f"multi-row insert into {table} carrying family_id")
        values = _top_level_items(_group(source, source.index("(")))
    elif source.startswith("select"):
        level = flatten(source)
        end = re.search(r"\s(from|where|returning|on\s+conflict)\s", level)
        values = _top_level_items(_unflatten_prefix(source, level[: end.start()] if end else level)[len("select"):])
    value = values[names.index("family_id")] if len(values) > names.index("family_id") else ""
    scalar = re.fullmatch(r"\$\d+(::\w+)?", value) or (value in params and not params[value].endswith("[]"))
    if scalar:
        return Verdict(SINGLE, f"insert into {table} carrying family_id = {value}")
    arrays = [name for name, kind in params.items() if kind.endswith("[]")]
    if "unnest(" in sql or any(re.search(rf"(?<![\w.]){a}(?!\w)", sql) for a in arrays) or re.search(
            r"\$\d+::\w+\[\]", sql):
        return Verdict(BATCH, f"multi-row insert into {table}: family_id from rows of arrays ({value})")
    return Verdict(SINGLE, f"insert into {table} carrying family_id from the statement's own rows ({value})")


def _group(text: str, start: int) -> str:
    """The text inside the parenthesis that opens at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] == "("
        depth -= text[i] == ")"
        if depth == 0:
            return text[start + 1: i]
    return text[start + 1:]


def _unflatten_prefix(text: str, flat_prefix: str) -> str:
    """The prefix of ``text`` that ``flatten`` turned into ``flat_prefix``."""
    depth, flat_length, i = 0, 0, 0
    target = len(flat_prefix)
    while i < len(text) and flat_length < target:
        c = text[i]
        if c == "(":
            if depth == 0:
                flat_length += len("(…)")
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0:
            flat_length += 1
        i += 1
    while i < len(text) and depth > 0:  # finish a group the prefix ended in
        depth += text[i] == "("
        depth -= text[i] == ")"
        i += 1
    return text[:i]


def touching() -> list[tuple[Statement, Verdict]]:
    functions, _, cascade_parents = schema()
    found = []
    for statement in python_statements():
        if not SQL_WORD.search(statement.sql):
            continue
        verdict = judge(statement.sql, functions, cascade_parents)
        if verdict is not None:
            found.append((statement, verdict))
    for function in functions.values():
        for sql in function.statements:
            verdict = judge(sql, functions, cascade_parents, function.params, frozenset({function.name}))
            if verdict is not None:
                statement = Statement(f"{function.where}: function {function.name}", function.where,
                                      f"function {function.name}: {sql}")
                found.append((statement, verdict))
    return found


def allowed_entry(statement: Statement) -> tuple[str, str, str, str] | None:
    matches = [entry for entry in ALLOWED
               if Path(statement.file).match(entry[0]) and normal(entry[1]) in statement.sql]
    assert len(matches) <= 1, f"{statement.where} matches several ALLOWED entries: {matches}"
    return matches[0] if matches else None


# --- the tests ----------------------------------------------------------------------------------------


def test_every_statement_is_routed_or_a_named_fan_out() -> None:
    found = touching()
    unrouted, used = [], set()
    for statement, verdict in found:
        if verdict.kind == SINGLE:
            continue
        entry = allowed_entry(statement)
        if entry is None or entry[2] != verdict.kind:
            unrouted.append(f"{statement.where}: {verdict.kind} ({verdict.why}): {statement.sql[:160]}")
        else:
            used.add(entry)
    assert not unrouted, "statements on the families neither routed by family_id nor named in ALLOWED:\n" + "\n".join(
        unrouted)
    stale = [entry[:2] for entry in ALLOWED if entry not in used]
    assert not stale, f"ALLOWED names statements that no longer exist or are now routed: {stale}"


def test_the_statements_are_found() -> None:
    """The search finds what is known to be there: a test of the finder, so that a change that
    hides statements from it shows."""
    found = {(s.file, v.kind, s.sql) for s, v in touching()}
    singles = [sql for _, kind, sql in found if kind == SINGLE]
    # The family's read, its creation at login and at code redemption, its revocation.
    assert any("from refresh_families where family_id = $1" in sql for sql in singles)
    assert any("insert into refresh_families (family_id," in sql for sql in singles)
    assert any("update refresh_families set revoked_at = $3" in sql for sql in singles)
    assert any("insert into security_events (kind, family_id" in sql for sql in singles)
    # The rotation, through the functions of the migrations.
    assert any(kind == BATCH and "unnest(p_family_id" in sql for _, kind, sql in found)
    assert len(found) >= 15


def test_every_table_with_a_family_id_is_placed() -> None:
    _, with_family_id, cascade_parents = schema()
    assert {"refresh_families", "security_events", "authorization_codes"} <= with_family_id
    assert with_family_id <= set(DISTRIBUTED_BY_FAMILY) | set(NOT_DISTRIBUTED_BY_FAMILY), (
        f"tables with a family_id, neither distributed by it nor said why not: "
        f"{with_family_id - set(DISTRIBUTED_BY_FAMILY) - set(NOT_DISTRIBUTED_BY_FAMILY)}")
    assert cascade_parents == {"clients", "users"}


@pytest.mark.parametrize(("sql", "kind"), [
    ("SELECT 1 FROM refresh_families WHERE family_id = $1", SINGLE),
    ("UPDATE refresh_families AS f SET generation = 1 WHERE f.family_id = $2::uuid", SINGLE),
    ("INSERT INTO refresh_families (family_id, client_id) VALUES ($1, $2)", SINGLE),
    ("INSERT INTO refresh_families (client_id) VALUES ($1)", FAN_OUT),
    ("INSERT INTO refresh_families (family_id, client_id) SELECT * FROM unnest($1::uuid[], $2::text[])", BATCH),
    ("INSERT INTO refresh_families (family_id, client_id) VALUES ($1, $2), ($3, $4)", BATCH),
    ("INSERT INTO refresh_families (family_id, client_id) SELECT r.f, r.c FROM unnest($1::uuid[], $2::text[])"
     " AS r(f, c)", BATCH),
    ("WITH revoked AS (UPDATE refresh_families SET revoked_at = $3 WHERE family_id = $1 RETURNING family_id)"
     " INSERT INTO security_events (kind, family_id) SELECT $2, family_id FROM revoked", SINGLE),
    ("UPDATE refresh_families SET revoked_at = now() WHERE user_id = $1", FAN_OUT),
    ("DELETE FROM refresh_families", FAN_OUT),
    ("SELECT count(*) FROM refresh_families", FAN_OUT),
    # A family_id predicate on another level does not route the outer statement.
    ("DELETE FROM refresh_families WHERE user_id IN (SELECT user_id FROM users WHERE family_id = $1)", FAN_OUT),
    ("SELECT * FROM security_events WHERE occurred_at < $1", FAN_OUT),
    ("UPDATE refresh_families f SET generation = 2 FROM unnest($1::uuid[]) AS r(family_id)"
     " WHERE f.family_id = r.family_id", BATCH),
    ("SELECT 1 FROM refresh_families WHERE family_id = ANY($1)", BATCH),
    ("DELETE FROM users WHERE user_id = $1", FAN_OUT),
    ("SELECT pg_relation_size('refresh_families')", FAN_OUT),
    ("SELECT 1 FROM clients WHERE client_id = $1", None),
])
def test_the_judge(sql: str, kind: str | None) -> None:
    verdict = judge(normal(sql), {}, {"users", "clients"})
    assert (verdict.kind if verdict else None) == kind, verdict


# --- EXPLAIN on real PostgreSQL --------------------------------------------------------------------------


def _explainable(statement: Statement) -> tuple[str, int] | None:
    """The statement as PostgreSQL can prepare it, and its parameter count; None if it holds a
    piece the finder could not put in (``{expr}``)."""
    sql = statement.sql
    if re.search(r"\{[^}]*\}", sql):
        return None
    if sql.startswith("function "):
        name, _, body = sql[len("function "):].partition(": ")
        function = schema()[0][name]
        body = re.sub(r"^(begin\s+)?(return\s+query\s+)?", "", body)
        if not re.match(r"(with|select|insert|update|delete)\b", body):
            return None
        for index, (param, kind) in enumerate(function.params.items(), start=1):
            body = re.sub(rf"(?<![\w.]){param}(?!\w)", f"${index}::{kind}", body)
        return body, len(function.params)
    count = max((int(n) for n in re.findall(r"\$(\d+)", sql)), default=0)
    return sql, count


async def test_routed_statements_read_families_by_primary_key(database_url: str) -> None:
    """Every statement that touches refresh_families, routed or batched, reads it through its
    primary key in the generic plan, on a table of 20,000 families (rolled back afterwards)."""
    plans = []
    connection = await asyncpg.connect(database_url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        try:
            # The families alone: their client and user are not looked at by the plans, so the
            # foreign-key triggers are off for this transaction (rolled back below).
            await connection.execute("SET LOCAL session_replication_role = replica")
            user_id = uuid.uuid4()
            await connection.execute(
                "INSERT INTO refresh_families (family_id, client_id, user_id, scopes, audience, auth_time, created_at,"
                " expires_at, generation, current_hash, last_rotated_at, idle_expires_at)"
                " SELECT gen_random_uuid(), 'citus-routing', $1::uuid, '{}', 'a', now(), now(),"
                " now() + interval '1 day', 0, sha256(n::text::bytea), now(), now() + interval '1 day' FROM generate_series(1, 20000) AS n",
                user_id)
            await connection.execute("ANALYZE refresh_families")
            await connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            for statement, verdict in touching():
                if verdict.kind == FAN_OUT or "refresh_families" not in statement.sql:
                    continue
                prepared = _explainable(statement)
                if prepared is None:
                    continue
                sql, count = prepared
                await connection.execute(f"PREPARE citus_routing AS {sql}")
                try:
                    args = ", ".join(["NULL"] * count)
                    rows = await connection.fetch(f"EXPLAIN EXECUTE citus_routing{f'({args})' if count else ''}")
                finally:
                    await connection.execute("DEALLOCATE citus_routing")
                plan = "\n".join(r[0] for r in rows)
                plans.append((statement.where, plan))
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    assert len(plans) >= 6, [where for where, _ in plans]
    for where, plan in plans:
        # Each read of the table (an insert has none) goes through the primary key, on family_id.
        for line in plan.splitlines():
            if "Scan" in line and re.search(r" on refresh_families\b", line):
                assert "using refresh_families_pkey" in line, f"{where}:\n{plan}"
