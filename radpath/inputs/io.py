"""File helpers shared by every stage: atomic writes and TSV/JSON tables."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp creates 0600 files; results on a shared cluster filesystem should get the usual
# permissions (0666 minus the user's umask), as any other written file would.
FILE_MODE = 0o666 & ~_umask()


def _publish(tmp: str, path: Path) -> None:
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file next to `path`; rename it onto `path` only on success.

    A job killed half-way leaves no file that looks complete (the temp file is removed
    on exceptions; a SIGKILL leaves only a dot-prefixed `.tmp` file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` for libraries that write files themselves.

    The temporary name ends with the full target name, so libraries that pick the format
    from the extension (`.nii.gz`, `.png`, `.h5`) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_tsv(df: pd.DataFrame, path: str | os.PathLike, index: bool = True) -> None:
    with atomic_write(path) as handle:
        # Default float formatting is Python's shortest round-trip repr: no precision lost.
        df.to_csv(handle, sep="\t", index=index, lineterminator="\n")


# Columns that hold names, never numbers or missing values: patient `007` stays '007' and a
# patient called `NA`, `True` or `1e3` keeps its name.
TEXT_COLUMNS = frozenset({
    "patient_id", "slide_id", "model", "endpoint", "cohort", "split", "feature", "covariate",
})  # fmt: skip


def read_tsv(path: str | os.PathLike, index_col: str | None = None) -> pd.DataFrame:
    """A TSV written by radpath; name columns (TEXT_COLUMNS, index_col) are read as text."""
    import pandas as pd  # here, not at module level: per-patient jobs start without pandas
    from pandas._libs.parsers import STR_NA_VALUES

    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    text = [c for c in header if c in TEXT_COLUMNS or c == index_col]
    df = pd.read_csv(
        path,
        sep="\t",
        float_precision="round_trip",
        dtype=dict.fromkeys(text, str),
        keep_default_na=False,
        na_values={c: STR_NA_VALUES for c in header if c not in text},
    )
    if index_col is not None:
        df = df.set_index(index_col)
    return df


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=_json_default)
        handle.write("\n")


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
