"""radpath: CT radiomics, H&E pathomics, deep CT models and clinical data to honest
survival models, run by the Snakemake workflow around it.

Subpackages, in the direction data flows (each imports only those before it):
inputs -> nn -> radiomics, pathology -> survival -> deep -> synthesis -> report; the job
entry point `radpath.cli` (every rule's `python -m radpath.cli <verb>`) and `radpath.slurm`
(the SLURM checks of the workflow) sit on top.
"""

__version__ = "0.1.0"
