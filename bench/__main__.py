"""``python -m bench`` (what ``make bench`` runs): the peer comparison, see run_peers.py."""

import sys

from bench.run_peers import main

sys.exit(main())
