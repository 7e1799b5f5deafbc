"""Rule `tile_slide`: tissue mask, tile coordinates (HDF5) and QC thumbnail of one slide."""

from radpath.jobs import run_item, setup_logging
from radpath.wsi import tile_slide

setup_logging(snakemake.log[0])
p = snakemake.params
run_item(
    snakemake.wildcards.slide,
    "slide_id",
    lambda: tile_slide(
        snakemake.input.slide, snakemake.wildcards.slide, p.tissue, p.tiles, p.seed,
        snakemake.output.coords, snakemake.output.thumbnail, mpp_override=p.mpp,
    ),
    [snakemake.output.coords, snakemake.output.thumbnail],
    p.on_error,
)
