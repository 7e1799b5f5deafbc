"""Rule `report`: render results/report/report.html."""

from radpath.jobs import setup_logging
from radpath.report import render_report

setup_logging(snakemake.log[0])
p = snakemake.params
render_report(
    snakemake.input, p.endpoints, p.models, p.config, snakemake.output.html,
    slides=dict(zip(p.slide_ids, snakemake.input.thumbnails, strict=True)),
    slide_patients=p.slide_patients,
    synthesis_meta=p.synthesis,
)
