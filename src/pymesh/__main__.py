"""`python -m pymesh` is the `pymesh` command."""

import sys

from pymesh.cli import main

sys.exit(main())
