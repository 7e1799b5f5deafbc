"""Interrupt a training subprocess mid-run (the resume tests of the training loops)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def signal_when_written(process: subprocess.Popen, target: Path, sig, timeout: float) -> int:
    """Send `sig` to `process` once `target` (a checkpoint) exists; its exit status.
    Fails if the process ends first or nothing is written within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not target.exists():
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.stderr.read().decode()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no checkpoint within {timeout:.0f} s")
        time.sleep(0.02)
    process.send_signal(sig)
    status = process.wait(timeout=60)
    process.stderr.close()
    return status
