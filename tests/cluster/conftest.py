import os

import pytest

from slurm import SlurmUnavailableError, start_cluster


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node SLURM cluster started for this session (installed first if need be).

    Skipped where SLURM cannot be installed (no root, no apt) unless RADPATH_REQUIRE_SLURM=1
    (set by .ci/run), which turns the skip into a failure.
    """
    try:
        cluster = start_cluster()
    except SlurmUnavailableError as err:
        if os.environ.get("RADPATH_REQUIRE_SLURM") == "1":
            raise
        pytest.skip(f"no SLURM here: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()
