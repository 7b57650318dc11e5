"""``python -m prunekit ...``: the same as the ``prunekit`` console command."""
import sys

from prunekit.cli import main

sys.exit(main())
