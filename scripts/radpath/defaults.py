"""The workflow's default configuration (config/config.yaml), for tests and benchmarks."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "config.yaml"


@functools.cache
def _load() -> dict:
    with open(CONFIG_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def default_config() -> dict:
    """A fresh copy of config/config.yaml (callers may modify it)."""
    return copy.deepcopy(_load())
