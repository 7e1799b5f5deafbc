"""Rule `cv_summary`: the repeated-CV results of every cross-validated model and a plot."""

import itertools

import pandas as pd

from radpath.io import read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.plots import plot_repeated_cv
from radpath.repeated_cv import summarize

setup_logging(snakemake.log[0])
p = snakemake.params
keys = list(itertools.product(p.endpoints, p.models))  # expand() order: endpoints outer
folds = {key: read_tsv(path) for key, path in zip(keys, snakemake.input.folds, strict=True)}
table = pd.DataFrame([summarize(endpoint, model, folds[endpoint, model])
                      for endpoint, model in keys])
write_tsv(table, snakemake.output.table, index=False)
plot_repeated_cv(folds, p.folds, p.repeats, snakemake.output.plot)
