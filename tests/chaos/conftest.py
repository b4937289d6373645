from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.cluster import PrivateCluster
from tests.chaos.harness import ChaosEnv


@pytest.fixture(scope="session")
def cluster() -> Iterator[PrivateCluster]:
    pg = PrivateCluster().init()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def chaos(cluster: PrivateCluster, tmp_path: Path) -> Iterator[ChaosEnv]:
    env = ChaosEnv(cluster, tmp_path)
    yield env
    env.close()
