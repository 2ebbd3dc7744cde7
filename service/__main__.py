"""`python -m service` = `upzir serve`."""

import sys

from .app import main

sys.exit(main(sys.argv[1:]))
