"""What the torch stages share (pathology's embedding and PathoSig clustering, deep CT,
synthesis): the device, seeds derived from labels, deterministic CPU algorithms, the
optimizer step, weight checksums, atomic saves and per-epoch checkpoints a killed job
resumes from.

Imports: radpath.inputs only. Only torch and numpy beyond the standard library: the deep
CT and synthesis jobs run in envs/deep.yaml, which has no h5py, OpenSlide or torchvision.
"""
