"""``python -m cvlib`` runs the ``cvlib`` command."""
from cvlib.cli import console_main

console_main()
