"""rayalign's core: the pieces every layer shares.

Typed config base, run registry, model loading and scoring, data and tasks, RL math,
reward functions and cluster helpers. `actors/` and `serving/` build on this package;
`pipelines/` builds on all three. Nothing here imports them (`make lint` checks).
"""
