"""``python -m kallm`` runs the CLI (useful where the console script is not on PATH)."""

from kallm.cli.app import main

main()
