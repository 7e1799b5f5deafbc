"""Rule `deep_ct_block`: the endpoint's deep CT scores as a feature block, after the leakage
audit, with a per-fold training summary and the training curves."""

import pandas as pd

from radpath.deep_ct_cohort import (
    block_members,
    block_scores,
    check_usage,
    plot_training_curves,
    read_folds,
    start_comparison,
    synthetic_comparison,
    training_summary,
)
from radpath.io import read_tsv, write_tsv
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
endpoint = snakemake.wildcards.endpoint
folds = read_folds(snakemake.input.folds)
outcomes = read_tsv(snakemake.input.outcomes, index_col="patient_id")


def gather(paths):
    return pd.concat([read_tsv(path) for path in paths], ignore_index=True)


scores, histories, usage = (
    gather(snakemake.input[name]) for name in ("scores", "history", "usage")
)
p = snakemake.params
check_usage(usage, folds)
write_tsv(block_scores(scores, folds, block_members(p.members)), snakemake.output.matrix)
write_tsv(training_summary(histories, usage, scores, outcomes, endpoint),
          snakemake.output.summary, index=False)
write_tsv(start_comparison(scores, p.members, p.start, outcomes, endpoint, p.bootstrap, p.seed),
          snakemake.output.starts, index=False)
write_tsv(synthetic_comparison(scores, p.members, outcomes, endpoint, p.bootstrap, p.seed),
          snakemake.output.synthetic, index=False)
plot_training_curves(histories, endpoint, snakemake.output.curves)
