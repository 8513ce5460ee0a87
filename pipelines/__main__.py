"""`python -m pipelines ARGS` is `rayalign ARGS`: the Ray job entrypoint of every stage,
for clusters where the job's working directory is this checkout rather than an install."""

import sys

from pipelines.cli import main

sys.exit(main())
