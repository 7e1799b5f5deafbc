"""How every job runs: logging to the rule's log file, SIGTERM, and per-item failures (a bad
input excludes its patient or slide with a record; anything else fails the job)."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from radpath.inputs.io import atomic_write, write_tsv

log = logging.getLogger("radpath")

# Non-TSV outputs (HDF5, PNG) of an excluded item hold one text line starting with this.
EXCLUSION_PREFIX = "excluded: "
# Words of errors that come from the machine, not the data (torch and CUDA raise these as
# RuntimeError, some libraries as ValueError).
RESOURCE_WORDS = ("out of memory", "cuda", "cudnn", "cublas", "nccl", "memoryerror")


def is_bad_input(error: BaseException) -> bool:
    """Whether `error` means the item's data is unusable (exclude it), not a passing failure.

    Bad input: radpath's input errors, all ValueErrors naming the item and file
    (CaseInputError, SlideError, RadiomicsError, ...). Everything else fails the job so that
    Snakemake's --retries runs it again (with more memory) and no item leaves the cohort for
    a reason that a retry would fix: out of memory (MemoryError, torch.OutOfMemoryError),
    CUDA and other RuntimeErrors, I/O errors (OSError: a network filesystem hiccup), and a
    cancelled job (SIGTERM, a SystemExit). Bugs (KeyError, TypeError, ...) fail too, and so
    do errors of the run's own settings (they set `excludes_item = False`, e.g. an unusable
    pyradiomics parameter file), which would otherwise exclude every patient.
    """
    if not isinstance(error, ValueError) or getattr(error, "excludes_item", True) is False:
        return False
    text = f"{type(error).__name__}: {error}".lower()
    return not any(word in text for word in RESOURCE_WORDS)


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
    signal.signal(signal.SIGTERM, sigterm_to_system_exit)


def sigterm_to_system_exit(signum, frame) -> None:
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
    on_error="exclude": the reason of a bad input (see `is_bad_input`) is written into every
    output (an `error` column in TSVs, an EXCLUSION_PREFIX line in other files) so the cohort
    step leaves this item out and the report lists it. An item excluded by an earlier job (an
    `upstream` input holding an exclusion record) stays excluded. Any other failure (out of
    memory, CUDA, I/O, a cancel) fails the job in both modes, so --retries can rerun it.
    """
    reason = next(filter(None, (exclusion_reason(p) for p in upstream)), None)
    if reason is None:
        try:
            job()
            return
        except Exception as error:
            if not is_bad_input(error):
                if on_error == "exclude":
                    log.error(
                        "%s %s: %s: %s; not excluded (not an input problem): the job fails so "
                        "that a retry can run it again", id_column.removesuffix("_id"), item_id,
                        type(error).__name__, error,
                    )
                raise
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            if on_error != "exclude":
                log.error(reason)
                raise
    log.warning("excluded %s: %s", item_id, reason)
    write_exclusion(item_id, id_column, reason, outputs)


class BatchInputError(ValueError):
    """Items of a batch job with bad input (on_error "stop"): one line per item."""


def run_batch(
    items: Iterable[tuple[str, Callable[[], None], list[str], list[str]]],
    id_column: str,
    on_error: str,
) -> None:
    """`run_item` for each (item_id, job, outputs, upstream) of one job that handles several
    items (a shard of slides), each item exactly as in a job of its own.

    on_error "exclude": a bad item's outputs record why and the others go on. "stop": the
    others go on too, then the job fails with BatchInputError naming every bad item (one
    line each). Any other failure (memory, CUDA, I/O, a cancel) fails the job at once, so
    that a retry runs it.
    """
    bad = []
    for item_id, job, outputs, upstream in items:
        try:
            run_item(item_id, id_column, job, outputs, on_error, upstream)
        except Exception as error:
            if not is_bad_input(error):
                raise
            bad.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
    if bad:
        raise BatchInputError("\n".join(bad))


def write_exclusion(item_id: str, id_column: str, reason: str, outputs: list[str]) -> None:
    """Record why an item was left out in each of its outputs."""
    import pandas as pd  # not at module level: the per-patient job's start-up stays light

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


def usable_slides(paths: dict[str, str]):
    """Split slide outputs into usable ones and those a job marked as excluded:
    ({slide: path}, DataFrame slide_id, reason)."""
    import pandas as pd  # not at module level: the per-patient job's start-up stays light

    usable, excluded = {}, []
    for slide_id, path in paths.items():
        reason = exclusion_reason(path)
        if reason is None:
            usable[slide_id] = path
        else:
            excluded.append({"slide_id": slide_id, "reason": reason})
    return usable, pd.DataFrame(excluded, columns=["slide_id", "reason"])
