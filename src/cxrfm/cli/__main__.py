"""``python -m cxrfm.cli``: the same as the ``cxrfm`` command."""
from . import main

raise SystemExit(main())
