"""rayalign Ray actors: one role per module."""
