"""Everything a person reads: the trial frame, summary.md, plots, the card and compare."""
