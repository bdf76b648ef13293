"""``python -m fastemb ...``: the ``fastemb`` command line (fastemb/cli.py)."""
import sys

from fastemb.cli import main

sys.exit(main())
