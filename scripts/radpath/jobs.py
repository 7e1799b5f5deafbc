"""Glue for the thin rule scripts: logging to the rule's log file and per-item failures."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from radpath.io import atomic_write, write_tsv

log = logging.getLogger("radpath")

# Errors that mean "this patient's/slide's input is bad", as opposed to a bug in radpath.
INPUT_ERRORS = (ValueError, OSError, RuntimeError)
# Non-TSV outputs (HDF5, PNG) of an excluded item hold one text line starting with this.
EXCLUSION_PREFIX = "excluded: "


def setup_logging(log_path: str | None) -> None:
    """Send radpath's log records (and uncaught tracebacks) to the rule's log file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    sys.excepthook = _log_uncaught
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame) -> None:
    """scancel, a SLURM time limit and Snakemake's own cancel send SIGTERM: unwind like an
    exception so half-written temporary outputs are removed (Python's default just dies)."""
    log.error("terminated by SIGTERM (job cancelled or out of time)")
    raise SystemExit(128 + signum)


def _log_uncaught(kind, error, traceback) -> None:
    """Uncaught errors go to the rule's log file too, not only to Snakemake's stderr."""
    log.error("%s: %s", kind.__name__, error, exc_info=(kind, error, traceback))


def run_item(
    item_id: str,
    id_column: str,
    job: Callable[[], None],
    outputs: list[str],
    on_error: str,
    upstream: list[str] = (),
) -> None:
    """Run one per-patient/per-slide job.

    on_error="stop": a bad input raises (the job fails with a one-line reason).
    on_error="exclude": the reason is written into every output (an `error` column in TSVs,
    an EXCLUSION_PREFIX line in other files) so the cohort step leaves this item out and the report lists it. An item excluded by an
    earlier job (an `upstream` input holding an exclusion record) stays excluded.
    """
    reason = next(filter(None, (exclusion_reason(p) for p in upstream)), None)
    if reason is None:
        try:
            job()
            return
        except INPUT_ERRORS as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            if on_error != "exclude":
                log.error(reason)
                raise
    log.warning("excluded %s: %s", item_id, reason)
    write_exclusion(item_id, id_column, reason, outputs)


def write_exclusion(item_id: str, id_column: str, reason: str, outputs: list[str]) -> None:
    """Record why an item was left out in each of its outputs."""
    record = pd.DataFrame({id_column: [item_id], "error": [reason]})
    for path in outputs:
        if str(path).endswith(".tsv"):
            write_tsv(record, path, index=False)
        else:
            with atomic_write(path) as handle:
                handle.write(f"{EXCLUSION_PREFIX}{reason}\n")


def exclusion_reason(path: str | Path) -> str | None:
    """The reason recorded by `run_item` in a non-TSV output, or None for a real output."""
    with open(path, "rb") as handle:
        head = handle.read(len(EXCLUSION_PREFIX))
    if head != EXCLUSION_PREFIX.encode():
        return None
    return Path(path).read_text(encoding="utf-8")[len(EXCLUSION_PREFIX):].strip()
