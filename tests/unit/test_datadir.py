from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.datadir import DataDir, NoDatabaseError, find, locate
from orchestrator.errors import DatabaseNotReadyError

pytestmark = pytest.mark.timeout(30)

DEFAULT = ".orchestrator/pgdata"


def initialized(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "PG_VERSION").write_text("16\n")
    return path


def test_find__the_nearest_initialized_directory_upward(tmp_path: Path) -> None:
    far = initialized(tmp_path / DEFAULT)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "a" / DEFAULT).mkdir(parents=True)  # no PG_VERSION: no database there

    assert find(DEFAULT, deep) == far
    near = initialized(tmp_path / "a" / "b" / DEFAULT)
    assert find(DEFAULT, deep) == near
    assert find(DEFAULT, tmp_path / "a") == far


def test_find__absolute_path__only_there(tmp_path: Path) -> None:
    initialized(tmp_path / "here" / DEFAULT)
    absolute = tmp_path / "elsewhere" / "pg"

    assert find(str(absolute), tmp_path / "here") is None
    initialized(absolute)
    assert find(str(absolute), tmp_path / "here") == absolute


def test_locate__creates_only_when_asked__in_home_or_start(tmp_path: Path) -> None:
    start = tmp_path / "proj" / "sub"
    start.mkdir(parents=True)

    assert locate(DEFAULT, start, create=True) == DataDir(start / DEFAULT, new=True)
    assert locate(DEFAULT, start, create=True, home=tmp_path / "proj") == DataDir(
        tmp_path / "proj" / DEFAULT, new=True
    )
    with pytest.raises(NoDatabaseError, match=rf"\({DEFAULT}\) in {start} or its parents"):
        locate(DEFAULT, start, create=False)
    assert issubclass(NoDatabaseError, DatabaseNotReadyError)
    assert NoDatabaseError.code == "no_database"
    assert not (start / ".orchestrator").exists()  # locating creates nothing itself


def test_locate__found__not_new(tmp_path: Path) -> None:
    data = initialized(tmp_path / DEFAULT)

    assert locate(DEFAULT, tmp_path / "x", create=True) == DataDir(data, new=False)
    assert locate(DEFAULT, tmp_path, create=False).describe() == (
        f"using the embedded database in {data}"
    )


def test_find__stops_at_the_project_root(tmp_path: Path) -> None:
    """A project with its own root (its orchestrator.toml) never picks up the database of
    another project above it, such as one made by running the tutorial in the home folder."""
    initialized(tmp_path / DEFAULT)  # someone else's, above the project
    project = tmp_path / "projB"
    deep = project / "src"
    deep.mkdir(parents=True)

    assert find(DEFAULT, deep, home=project) is None
    assert locate(DEFAULT, deep, create=True, home=project) == DataDir(project / DEFAULT, new=True)
    with pytest.raises(NoDatabaseError):
        locate(DEFAULT, deep, create=False, home=project)
    assert find(DEFAULT, deep) == tmp_path / DEFAULT  # without a root: as git finds .git


def test_resolve_url__library_use_never_creates_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.db.connect import resolve_url

    monkeypatch.chdir(tmp_path)
    with pytest.raises(NoDatabaseError, match="orchestrator migrate"):
        resolve_url("", DEFAULT)
    assert not (tmp_path / ".orchestrator").exists()
    assert resolve_url("postgresql://h/db", DEFAULT) == "postgresql://h/db"
