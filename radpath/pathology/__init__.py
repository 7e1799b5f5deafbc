"""H&E whole-slide images: slides and their tissue and tiles (slides), tile encoders
and their weights (encoders), tile embedding (embedding), the features.h5 files read back
and pooled (feature_files), morphology, patient matrices (matrices), PathoSig's contrastive
clustering (contrastive) and its cohort steps (pathosig), and the export to CLAM's and
TRIDENT's layouts (export for one slide, export_layout for the cohort).

Imports: radpath.inputs and radpath.nn.
"""
