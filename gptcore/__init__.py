"""gptcore: the course's from-scratch GPT as a library (data, tokenizer, models, trainer, checkpoints).

Kept import-light on purpose (no torch here): `python -m gptcore prepare` and the tuner's parent process
must not pay for, or initialise, what they do not use.
"""

__version__ = "0.1.0"
