"""tune: an Optuna study over the GPT's six main hyperparameters, one process per trial.

Like gptcore/__init__.py this imports nothing heavy: the tuner's parent process never imports torch.
"""
