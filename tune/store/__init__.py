"""Where studies live: storage URLs and opening them, locks, liveness of running trials, loading."""
