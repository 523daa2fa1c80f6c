"""`python -m vqgen` and `accelerate launch -m vqgen`: the same CLI as the `vqgen` command."""

import sys

from vqgen.cli import main

sys.exit(main())
