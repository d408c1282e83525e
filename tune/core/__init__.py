"""The tuner's shared vocabulary: budgets, the search space, outcomes, the trial record, provenance, units."""
