"""The synthetic demo cohort (`make demo`, the tests): CTs with tumour and lung labels, H&E
slides and clinical sheets whose survival follows planted radiomic and histologic signal.
Not part of the radpath library: nothing under radpath/ imports it."""
