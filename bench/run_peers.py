"""Kept for old command lines: ``python3 bench/run_peers.py ...`` is ``python -m bench ...`` (see bench/run.py)."""

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import run_cli

if __name__ == "__main__":
    sys.exit(run_cli())
