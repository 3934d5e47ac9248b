"""Schema migrations: numbered SQL files per backend, db/migrations/<backend>/NNNN_what.sql, applied in order.

Why in-repo numbered files and not alembic or yoyo: there is no ORM to generate migrations from, the two
backends need different SQL anyway, and the runner is a dozen lines per backend; a dependency buys nothing.
Each file runs in one transaction that also records its version in `schema_migrations`, so a migration is
applied entirely or not at all, and concurrent migrators (several workers or instances starting at once) are
serialised: PostgreSQL with an advisory lock, SQLite with BEGIN IMMEDIATE. 0001 is the schema that existed
before migrations (CREATE ... IF NOT EXISTS), so a database created by the old init_schema upgrades in place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

# Any fixed key: every migrator of one database takes the same lock.
ADVISORY_LOCK_KEY = 727274


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(backend: str) -> list[Migration]:
    """Every migration of `backend` ("postgres" or "sqlite"), in version order."""
    found = []
    for entry in resources.files("db").joinpath("migrations", backend).iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{backend} migrations must be numbered 1..n without gaps: {[m.version for m in found]}")
    return found


def sqlite_statements(script: str) -> Iterator[str]:
    """Split a script into statements (triggers' bodies included), as executescript would but without its
    implicit COMMIT, which would end the migration's transaction early."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip() and not all(s.strip().startswith("--") for s in statement.splitlines() if s.strip()):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {statement[:80]!r}")
