"""Data IO, row validation and the bundled tasks."""
