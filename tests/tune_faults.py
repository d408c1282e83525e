"""Stand-ins for gptcore.train.train that misbehave, for the tuner's tests (loaded in the trial process)."""

import time


def hang(model_cfg, train_cfg, data, **kwargs):
    """Never returns: the tuner must kill it at the hard timeout."""
    time.sleep(3600)


def boom(model_cfg, train_cfg, data, **kwargs):
    """Raises an ordinary error."""
    raise ValueError("boom: injected failure")


def cuda_oom(model_cfg, train_cfg, data, **kwargs):
    """Raises the message the CUDA caching allocator gives, tagged with a phase as train() does."""
    exc = RuntimeError("CUDA out of memory. Tried to allocate 2.50 GiB (GPU 0; 79.1 GiB total capacity)")
    exc.phase = "backward"
    raise exc


def sigkill(model_cfg, train_cfg, data, **kwargs):
    """Dies the way the kernel's OOM killer kills: SIGKILL, no Python exception, no message."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


# Stand-ins that "train" to a step budget at once, with a validation loss set by the configuration and the seed:
# confirmation runs (same configuration, seeds 1 and 2 after the study's 0) then give known figures.


def _result(model_cfg, train_cfg, val_loss: float):
    """What gptcore.train.train returns for a run that trained to its step budget with this validation loss."""
    from gptcore.train import EvalPoint, TrainResult

    steps = train_cfg.max_iters or 100
    return TrainResult(history=[EvalPoint(steps, val_loss, val_loss, 0.01)], steps=steps,
                       tokens=steps * train_cfg.batch_size * model_cfg.block_size, train_seconds=0.01,
                       eval_seconds=0.001, tokens_per_s=1e5, peak_memory={"peak_rss_bytes": 2**20}, n_params=1000,
                       mfu=None, device="cpu", stopped_by="max_iters", warmup_steps=2, warmup_seconds=0.001)


def steady(model_cfg, train_cfg, data, **kwargs):
    """Loss 100 x the learning rate, plus 1e-4 x the seed: re-runs keep the single runs' order, ranges apart."""
    return _result(model_cfg, train_cfg, 100 * train_cfg.learning_rate + 1e-4 * train_cfg.seed)


def crossing(model_cfg, train_cfg, data, **kwargs):
    """Seed 0 favours low learning rates, later seeds high ones: L, 2 - L, 4 - 3L for seeds 0, 1, 2 (L = 100 x
    the learning rate), a mean of 2 - L: the best mean is the worst single run among the confirmed."""
    base = 100 * train_cfg.learning_rate
    return _result(model_cfg, train_cfg, base + 2 * train_cfg.seed * (1 - base))


def seed_one_fails(model_cfg, train_cfg, data, **kwargs):
    """Like steady, but a run with seed 1 raises an ordinary error, every time."""
    if train_cfg.seed == 1:
        raise ValueError("seed 1: injected failure")
    return steady(model_cfg, train_cfg, data)


def curved(model_cfg, train_cfg, data, on_eval=None, eval_at=None, **kwargs):
    """Evaluates at the tuner's rungs: loss 1 + |log10(learning rate) + 2.5| at the target (best at 10^-2.5),
    plus 1 - f at the share f of the budget, so every rung loss lies on one line with the target loss and the
    learning-curve prediction is exact. Stops where on_eval says "stop", as train() does."""
    import math

    from gptcore.train import EvalPoint

    target = 1 + abs(math.log10(train_cfg.learning_rate) + 2.5)
    steps = train_cfg.max_iters or 100
    for f in eval_at or ():
        step = max(1, round(f * steps))
        if on_eval is not None and on_eval(step, target + 1 - f, target + 1 - f) == "stop":
            result = _result(model_cfg, train_cfg, target + 1 - f)
            result.history, result.steps, result.stopped_by = [EvalPoint(step, target + 1 - f,
                                                                         target + 1 - f, 0.01)], step, "callback"
            return result
    return _result(model_cfg, train_cfg, target)
