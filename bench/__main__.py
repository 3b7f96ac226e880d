"""``python -m bench`` (what ``make bench`` runs): see bench/run.py."""

import sys

from bench.run import run_cli

sys.exit(run_cli())
