"""``python -m hhalign``: the same command as ``hhalign``."""

from hhalign.cli import main

main()
