"""python -m tune card: one self-contained HTML page per study."""
