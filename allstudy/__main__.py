"""``python -m allstudy``: the study's command line (see :mod:`allstudy.cli`)."""

from allstudy.cli import main

raise SystemExit(main())
