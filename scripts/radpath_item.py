"""One per-patient or per-slide job of radpath: see radpath/cli.py (`--help`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from radpath.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
