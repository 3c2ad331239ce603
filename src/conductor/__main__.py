"""`python -m conductor` is the `conductor` command."""

import sys

from .cli import main

sys.exit(main())
