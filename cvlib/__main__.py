"""``python -m cvlib`` runs the ``cvlib`` command."""
import sys

from cvlib.cli import main

sys.exit(main())
