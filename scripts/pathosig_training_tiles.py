"""Rule `pathosig_training_tiles`: a seeded tile sample of the training patients' slides."""

from radpath.jobs import setup_logging
from radpath.pathosig import sample_training_tiles

setup_logging(snakemake.log[0])
p = snakemake.params
slides = {
    slide_id: {**source, "coords": coords}
    for (slide_id, source), coords in zip(p.slides.items(), snakemake.input.coords, strict=True)
}
sample_training_tiles(slides, p.tiles, p.tiles_per_slide, p.seed, snakemake.output.tiles)
