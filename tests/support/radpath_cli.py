"""`python -m radpath.cli` run as a job runs it: a subprocess with the checkout on PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def radpath_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "radpath.cli", *args], capture_output=True,
                          text=True, encoding="utf-8", env=env)
