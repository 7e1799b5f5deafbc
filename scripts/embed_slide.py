"""Rule `embed_tiles`: embed every tile of one slide (CUDA when present, else CPU)."""

import logging

from radpath.embed import embed_slide
from radpath.jobs import run_item, setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params


def job():
    summary = embed_slide(
        snakemake.input.slide, snakemake.wildcards.slide, snakemake.input.coords,
        snakemake.output.features, p.embedding, p.tiles, mpp_override=p.mpp, seed=p.seed,
    )
    logging.getLogger("radpath").info("embedding summary: %s", summary)


run_item(snakemake.wildcards.slide, "slide_id", job, [snakemake.output.features], p.on_error,
         upstream=[snakemake.input.coords])
