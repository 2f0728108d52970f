"""``python -m scripts.bench``: run the benchmark."""

from .run import main

raise SystemExit(main())
