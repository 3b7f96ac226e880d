"""``python -m chaos`` (what ``make chaos`` runs): see chaos/run.py."""

import sys

from chaos.run import main

sys.exit(main())
