"""Small synthetic CT cases (a lesion in soft tissue, its mask) and pyradiomics settings that
exercise every feature class quickly, shared by the CT, radiomics, DICOM and CLI tests."""


from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radpath.inputs.configuration import default_config

SPACING = (0.8, 0.8, 2.5)  # x, y, z mm

ORIGIN = (-20.0, 15.0, -30.0)

SMALL = (20, 48, 48)  # z, y, x

LARGE = (120, 134, 134)  # big enough for prepare_case to crop the CT before resampling

CT_CFG = default_config()["ct"]

FAST_PARAMS = {  # original image only, every feature class: fast but exercises everything
    "imageType": {"Original": {}},
    "featureClass": {
        c: None for c in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
    },
    "setting": {
        "binWidth": 25,
        "voxelArrayShift": 1000,
        "interpolator": "sitkBSpline",
        "padDistance": 5,
        "preCrop": True,
        "minimumROIDimensions": 3,
        "resegmentRange": [-1024, 3071],
    },
}


def synthetic_case(shape=SMALL, label: int = 1, seed: int = 0):
    """Int16 CT (lung-like background, textured ellipsoid lesion) and its label mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2
    dist = np.sqrt(
        ((x - c[2]) * SPACING[0]) ** 2
        + ((y - c[1]) * SPACING[1] / 1.3) ** 2
        + ((z - c[0]) * SPACING[2]) ** 2
    )
    lesion = dist <= 8.0
    values = rng.normal(-800, 60, shape)
    values[lesion] = rng.normal(30, 40, lesion.sum()) + 0.5 * (x[lesion] - c[2]) ** 2
    ct = sitk.GetImageFromArray(np.round(values).astype(np.int16))
    ct.SetSpacing(SPACING)
    ct.SetOrigin(ORIGIN)
    mask = sitk.GetImageFromArray((lesion * label).astype(np.uint8))
    mask.CopyInformation(ct)
    return ct, mask


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path
