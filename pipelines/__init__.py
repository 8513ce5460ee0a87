"""rayalign stage drivers, the CLI, configs and data handling."""
