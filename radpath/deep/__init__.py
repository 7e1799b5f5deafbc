"""Deep CT models: the lesion cubes cut from each CT (cubes; read back by cube_files, which
needs no pyradiomics), the registry of 3D networks (networks), training one fold member
with its honest inner epoch choice (training), the folds, block scores and audits at the
cohort level (cohort), attention maps per scale (gradcam: Grad-CAM, saliency), and the GPU
jobs that tie them to files (jobs).

Imports: radpath.inputs, radpath.nn and radpath.survival.metrics (Harrell's C chooses the
epoch). The deep CT block reaches the Cox models as a file, so survival never imports it.
"""
