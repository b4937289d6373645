"""Where the embedded Postgres keeps its data, found the way git finds `.git`.

With no database URL configured, every command uses the embedded server in
`embedded_data_dir` (default `.orchestrator/pgdata`). A relative path is looked for in the
working directory and then in each of its parents, so `orchestrator runs list` works from any
subdirectory of the project; an absolute path is used as it is. The search stops at the
project's root when there is one (the directory of the `orchestrator.toml` found upward), so a
project never picks up the database of another project above it.

Creating a data directory starts a new, empty database (tens of megabytes, several seconds).
Only `orchestrator migrate` and `orchestrator run` may do it, and they say where; any other
command that finds none says so, where it looked, and what to do, instead of quietly
querying an empty database somewhere unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import DatabaseNotReadyError


class NoDatabaseError(DatabaseNotReadyError):
    """No database URL is configured and no embedded data directory was found."""

    code = "no_database"


@dataclass(frozen=True)
class DataDir:
    """The embedded data directory in use, and whether this command is about to create it."""

    path: Path
    new: bool

    def describe(self) -> str:
        if self.new:
            return f"creating a new embedded database in {self.path}"
        return f"using the embedded database in {self.path}"


def is_initialized(path: Path) -> bool:
    """A data directory holds a database once initdb has written its PG_VERSION file."""
    return (path / "PG_VERSION").is_file()


def candidates(configured: str, start: Path, home: Path | None = None) -> list[Path]:
    """The places a data directory is looked for, nearest first: `start` and its parents, up
    to `home` (the project's root) when `start` is inside it."""
    path = Path(configured).expanduser()
    if path.is_absolute():
        return [path]
    start = start.resolve()
    folders = [start, *start.parents]
    if home is not None and home.resolve() in folders:
        folders = folders[: folders.index(home.resolve()) + 1]
    return [folder / path for folder in folders]


def find(configured: str, start: Path, home: Path | None = None) -> Path | None:
    """The nearest initialized data directory, or None."""
    return next((p for p in candidates(configured, start, home) if is_initialized(p)), None)


def locate(configured: str, start: Path, *, create: bool, home: Path | None = None) -> DataDir:
    """The data directory to use: the nearest one found (no higher than `home`, the project's
    root, when there is one), else (with `create`) a new one in `home` (default `start`, the
    working directory); else `NoDatabaseError`."""
    found = find(configured, start, home)
    if found is not None:
        return DataDir(found, new=False)
    places = candidates(configured, start, home)
    if create:
        path = places[0] if len(places) == 1 else (home or start).resolve() / configured
        return DataDir(path, new=True)
    if len(places) == 1:
        where = f"no embedded database in {places[0]} (embedded_data_dir)"
    else:
        where = f"no embedded database ({configured}) in {start.resolve()} or its parents"
    raise NoDatabaseError(
        f"no database: database_url is not set and there is {where}; run `orchestrator "
        "migrate` in the project directory to create one, or set ORCHESTRATOR_DATABASE_URL "
        "(or database_url in orchestrator.toml) to use a Postgres server"
    )
