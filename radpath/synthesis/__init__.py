"""Synthetic CT: the layout of a patient (lungs, nodule, body) on the model's grid
(layout; prepare is the CPU job that reads the CT for it), the mask-conditioned 3D DDPM
(diffusion), its training and sampling jobs (jobs), and the realism and usefulness checks
(quality).

Imports: radpath.inputs and radpath.nn.
"""
