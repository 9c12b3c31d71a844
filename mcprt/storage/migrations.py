"""Migrations: one numbered file set per dialect (migrations/sqlite/, migrations/postgres/), the same
versions and names in both; each backend applies a file and its schema_migrations row in one transaction."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .. import resource_dir
from .base import MigrationError

MIGRATIONS_DIR = resource_dir("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def statements(self) -> list[str]:
        """The file's statements, split where sqlite3 says a statement is complete."""
        out, current = [], ""
        for line in self.text().splitlines(keepends=True):
            current += line
            if sqlite3.complete_statement(current):
                out.append(current.strip())
                current = ""
        if current.strip() and not all(l.strip().startswith("--") for l in current.splitlines() if l.strip()):
            raise MigrationError(f"{self.path.name}: trailing statement without ';'")
        return out


def discover_migrations(directory: Path | None = None, dialect: str = "sqlite") -> list[Migration]:
    """Migrations in version order; a gap or a duplicate version is a packaging error."""
    directory = directory if directory is not None else MIGRATIONS_DIR / dialect
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name not NNNN_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must run 1..N without gaps: {versions}")
    return found


def unknown_versions(applied: set[int], known: list[Migration], where: str) -> None:
    """Refuse a database that holds migrations this code does not know."""
    unknown = sorted(applied - {m.version for m in known})
    if unknown:
        raise MigrationError(
            f"database {where} holds migration(s) {unknown} that this version of mcprt "
            f"does not know (it knows 1..{len(known)}); use a newer mcprt or another database")
