"""`python -m diagnosis_zero ...` (used by `accelerate launch -m diagnosis_zero train ...`)."""

import sys

from diagnosis_zero.cli import main

if __name__ == "__main__":
    sys.exit(main())
