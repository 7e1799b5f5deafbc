"""A store of per-item results that a job re-uses instead of recomputing them.

A GPU job embeds a shard of slides (radpath.pathology.shards); Snakemake re-runs the whole
shard when one of its slides changes, when the shard gains or loses a slide, or when the
job failed because of one bad slide (on_patient_error: stop). Likewise a per-patient CT job
makes three things (radiomics, deep CT cubes, synthesis layout) and re-runs all three when
the settings of one change. What has unchanged inputs and settings need not be made again:
each finished result is kept in the store (config `reuse`, results/reuse/) as a hard link
(no second copy on disk), under a key made of its settings and the identity of its inputs.
A later job with the same key links it back.

Input identity: the SHA-256 of files up to HASH_LIMIT bytes (coords.h5, a model, most CTs),
else the size and modification time (a multi-GB slide); for a DICOM folder, its files' names,
sizes and times. A changed setting, a re-tiled slide with other
tiles or a replaced slide file therefore recomputes that slide; an unchanged re-tiling does
not. Set the store to None (config reuse: false) to recompute everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from radpath.inputs.io import atomic_write

log = logging.getLogger("radpath")

HASH_LIMIT = 64 * 2**20


def file_identity(path: str | os.PathLike) -> list:
    """[path, sha256] for small files, [path, size, mtime_ns] for large ones, [path] for a
    missing one (the job itself then says what is wrong)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return [str(path)]
    if os.path.isdir(path):  # a DICOM folder: its files' names, sizes and times
        files = [(entry.name, entry.stat()) for entry in os.scandir(path) if entry.is_file()]
        return [str(path), sorted([name, s.st_size, s.st_mtime_ns] for name, s in files)]
    if stat.st_size <= HASH_LIMIT:
        return [str(path), _sha256(os.fspath(path), stat.st_size, stat.st_mtime_ns)]
    return [str(path), stat.st_size, stat.st_mtime_ns]


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's SHA-256, once per process while its size and time are unchanged."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def reuse_key(settings: dict, inputs: Iterable[str | os.PathLike]) -> str:
    """The key of an item's result: its job's settings and its inputs' identities."""
    text = json.dumps(
        {"settings": settings, "inputs": [file_identity(p) for p in inputs]}, sort_keys=True
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _link(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (replacing it); a copy across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def reuse_or_make(
    store: str | os.PathLike | None,
    item_id: str,
    key: str,
    outputs: list[str | os.PathLike],
    make: Callable[[], None],
) -> bool:
    """Link the item's stored outputs for `key` into `outputs`, or `make` them and store them.

    Returns True when the stored result was re-used. With `store` None it only makes.
    A `make` that raises stores nothing.
    """
    if store is None:
        make()
        return False
    entry = Path(store) / item_id
    stored = [entry / Path(output).name for output in outputs]
    key_file = entry / "key"
    if key_file.exists() and key_file.read_text(encoding="utf-8") == key and all(
        p.exists() for p in stored
    ):
        for source, output in zip(stored, outputs, strict=True):
            _link(source, Path(output))
            os.utime(output)  # newer than the inputs, as a freshly made output would be
        log.info("%s: unchanged inputs and settings: re-used %s", item_id, entry)
        return True
    make()
    key_file.unlink(missing_ok=True)  # the entry is inconsistent until the new key is written
    for output, target in zip(outputs, stored, strict=True):
        _link(Path(output), target)
    with atomic_write(key_file) as handle:
        handle.write(key)
    return False
