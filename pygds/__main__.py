"""`python -m pygds`: the same as the `pygds` command."""
import sys

from .cli.main import main

sys.exit(main())
