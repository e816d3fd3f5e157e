"""``python -m iss3d``: the ``iss3d`` command line."""

from iss3d.infer.cli import main

raise SystemExit(main())
