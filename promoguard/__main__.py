"""Run the promoguard command line with ``python -m promoguard``."""

from promoguard.cli import main

main()
