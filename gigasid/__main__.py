"""``python -m gigasid`` is the ``gigasid`` command."""

from gigasid.cli import main

main()
