"""radpath: CT radiomics, H&E pathomics and clinical data to honest survival models."""

__version__ = "0.1.0"
