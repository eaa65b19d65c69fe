"""python -m kvstore.cli: the kv command."""
import sys

from kvstore.cli import main

sys.exit(main())
