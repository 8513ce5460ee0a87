"""rayalign Ray Serve apps and the checkpoint registry they read."""
