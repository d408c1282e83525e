"""Running one trial: its process (runner, worker), its measurements, slots and the worker pool."""
