"""`python -m ppar_cli ...` (what `torchrun -m ppar_cli train ...` runs)."""

import sys

from ppar_cli.main import main

sys.exit(main())
