"""Errors the user can fix: the CLIs print them as one line and exit with code 2."""


class UserError(Exception):
    """Bad input (a flag, a file, a config, a character): shown without a traceback."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at step {step}")
        self.step = step
        self.loss = loss
