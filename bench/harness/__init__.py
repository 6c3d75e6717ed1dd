"""The measuring harness (see run.py): `from bench import harness` or `from bench.harness import
Provider` as before."""

from bench.harness.run import *  # noqa: F401,F403
from bench.harness.run import REPO, WALL_CLOCK_REPS, EXIT_CONTEXT_LOST, MODES  # noqa: F401
