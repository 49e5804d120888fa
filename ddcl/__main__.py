"""`python -m ddcl ...`: what `ddcl` runs, in this interpreter (the roles `ddcl up` starts)."""

import sys

from ddcl.cli import main

sys.exit(main())
