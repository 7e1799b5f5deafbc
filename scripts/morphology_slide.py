"""Rule `morphology`: nuclei and tissue morphology of one slide (one-row TSV)."""

from radpath.jobs import run_item, setup_logging
from radpath.morphology import morphology_features

setup_logging(snakemake.log[0])
p = snakemake.params
run_item(
    snakemake.wildcards.slide,
    "slide_id",
    lambda: morphology_features(
        snakemake.input.slide, snakemake.wildcards.slide, snakemake.input.coords,
        p.morphology, p.tiles, p.seed, snakemake.output.features, mpp_override=p.mpp,
    ),
    [snakemake.output.features],
    p.on_error,
    upstream=[snakemake.input.coords],
)
