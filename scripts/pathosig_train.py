"""Rule `pathosig_train`: contrastive clustering of the training tiles (resumable)."""

import shutil

import pandas as pd

from radpath.contrastive import save_clustering_model, train_clustering
from radpath.io import write_tsv
from radpath.jobs import setup_logging
from radpath.pathosig import read_training_tiles

setup_logging(snakemake.log[0])
p = snakemake.params
h5, tiles, _ = read_training_tiles(snakemake.input.tiles)
try:
    result = train_clustering(tiles, p.network, p.checkpoints, seed=p.seed,
                              threads=snakemake.threads)
finally:
    h5.close()
save_clustering_model(snakemake.output.model, result, p.network)
write_tsv(pd.DataFrame(result["history"]), snakemake.output.history, index=False)
shutil.rmtree(p.checkpoints, ignore_errors=True)  # the model is written: nothing to resume
