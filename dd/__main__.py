"""`python -m dd ...` (also what torchrun launches)."""
import sys

from dd.cli import main

sys.exit(main())
