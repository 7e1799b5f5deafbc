"""Rule `pathosig_mosaics`: each phenotype cluster's most typical training tiles."""

from radpath.contrastive import read_clusters_h5
from radpath.jobs import setup_logging, usable_slides
from radpath.pathosig import write_mosaics

setup_logging(snakemake.log[0])
p = snakemake.params
usable, _ = usable_slides(dict(zip(p.slides, snakemake.input.clusters, strict=True)))
assignments = {slide_id: read_clusters_h5(path)[:3] for slide_id, path in usable.items()}
write_mosaics(assignments, p.slides, p.tiles, p.n_clusters, p.n_tiles,
              snakemake.output.mosaics, snakemake.output.table)
