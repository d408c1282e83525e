"""python -m tune compare: several studies side by side."""
