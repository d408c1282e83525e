"""The memory judge (predicted vs limit) and the max-batch probe."""
