"""Slides grouped into the shards that one GPU job embeds (or assigns) with the model loaded
once (config `pathology.slides_per_job`).

A slide's shard comes from a hash of its ID, not from its row in the sheet: re-ordering the
sheet moves nothing, and adding or removing a slide changes only its own shard's job. The
number of shards is the power of two that keeps the mean shard at most `slides_per_job`
slides, so it changes only when the cohort doubles or halves (then every shard re-runs once;
the slides themselves are taken from the re-use store, see radpath.inputs.reuse).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable


def shard_count(n_slides: int, slides_per_job: int) -> int:
    """The power of two with n_slides / count <= slides_per_job (1 for an empty cohort)."""
    if slides_per_job < 1:
        raise ValueError(f"pathology.slides_per_job must be at least 1, got {slides_per_job}")
    wanted = math.ceil(n_slides / slides_per_job)
    return 1 << max(0, math.ceil(math.log2(wanted))) if wanted > 1 else 1


def shard_of(slide_id: str, n_shards: int) -> str:
    """The shard name of a slide among `n_shards`: a 4-digit (or longer) index."""
    return f"{zlib.crc32(slide_id.encode('utf-8')) % n_shards:04d}"


def shard_slides(slide_ids: Iterable[str], slides_per_job: int) -> dict[str, list[str]]:
    """{shard: its slides in the given order}, shards sorted, empty ones left out.

    slides_per_job 1 keeps one job per slide, named by the slide's ID.
    """
    slide_ids = list(slide_ids)
    if slides_per_job == 1:
        return {slide_id: [slide_id] for slide_id in sorted(slide_ids)}
    n_shards = shard_count(len(slide_ids), slides_per_job)
    shards: dict[str, list[str]] = {}
    for slide_id in slide_ids:
        shards.setdefault(shard_of(slide_id, n_shards), []).append(slide_id)
    return dict(sorted(shards.items()))


def slide_shard(shards: dict[str, list[str]]) -> dict[str, str]:
    """{slide: its shard} of a `shard_slides` plan."""
    return {slide_id: shard for shard, slides in shards.items() for slide_id in slides}


def shard_plan(
    slide_ids: Iterable[str],
    slides_per_job: int,
    slide_path: dict[str, str],
    slide_mpp: dict[str, str],
    coords_pattern: str,
    out_pattern: str,
    extra_inputs: Iterable[str] = (),
) -> dict[str, dict]:
    """Per shard, what its GPU job needs (the Snakefile's input functions look it up):

    - "inputs": {"coords": [...], "extra": extra_inputs} (Snakemake's input: the slides
      themselves are inputs of their coords.h5, so a replaced slide re-runs its shard);
    - "slides": the job's --slides JSON: [{slide_id, slide, mpp, coords, out}];
    - "outputs": {slide: its output file}.

    `slide_mpp`: the sheet's MPP override as text ('' = read it from the slide);
    `coords_pattern` has {slide}, `out_pattern` {shard} and {slide}.
    """
    plan = {}
    for shard, slides in shard_slides(slide_ids, slides_per_job).items():
        items = [
            {
                "slide_id": slide_id,
                "slide": slide_path[slide_id],
                "mpp": float(slide_mpp[slide_id]) if slide_mpp[slide_id] else None,
                "coords": coords_pattern.format(slide=slide_id),
                "out": out_pattern.format(shard=shard, slide=slide_id),
            }
            for slide_id in slides
        ]
        plan[shard] = {
            "inputs": {
                "coords": [item["coords"] for item in items],
                "extra": list(extra_inputs),
            },
            "slides": json.dumps(items),
            "outputs": {item["slide_id"]: item["out"] for item in items},
        }
    return plan


def plan_outputs(plan: dict[str, dict]) -> dict[str, str]:
    """{slide: its output file} of a `shard_plan`."""
    return {slide_id: out for job in plan.values() for slide_id, out in job["outputs"].items()}
