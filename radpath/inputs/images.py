"""What the CT readers share (radpath.inputs.ct for image files and DICOM
folders, radpath.inputs.dicom for pydicom's objects): the error of an unusable case and the
description of a DICOM series."""

from __future__ import annotations

from typing import NamedTuple


class CaseInputError(ValueError):
    """A CT or mask that cannot be used; the message names the patient, file and reason."""


class SeriesInfo(NamedTuple):
    """One DICOM series of a folder, described from the header of its first file."""

    uid: str
    modality: str
    description: str
    image_type: str  # ImageType values joined by backslashes, e.g. ORIGINAL\PRIMARY\AXIAL
    frame_of_reference: str
    n_slices: int
    files: tuple[str, ...]  # sorted by slice position (GDCM)

    @property
    def is_ct(self) -> bool:
        """A CT image series that is not a localizer (scout)."""
        return self.modality == "CT" and "LOCALIZER" not in self.image_type.upper().split("\\")

    def describe(self) -> str:
        return f"{self.uid} '{self.description}' ({self.modality or '?'}, {self.n_slices} slices)"
