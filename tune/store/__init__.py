"""Where studies live: --storage values (spec), opening them (storage, journal), locks, study names, liveness of
running trials, loading for reports; Optuna's private API only in _optuna."""
