"""`python -m scepd.cli`, as the `scepd` command."""

import sys

from scepd.cli import main

sys.exit(main())
