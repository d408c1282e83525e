"""A stand-in for gptcore.train.train (loaded in the trial process) that reports the compile cache it was given."""

import os


def reports_cache(model_cfg, train_cfg, data, **kwargs):
    """A run that 'compiled' for 1.5 s, its reason the TORCHINDUCTOR_CACHE_DIR the trial process was started with."""
    from gptcore.train import EvalPoint, TrainResult

    steps = train_cfg.max_iters or 100
    return TrainResult(history=[EvalPoint(steps, 2.0, 2.0, 0.01)], steps=steps, tokens=steps * 64, train_seconds=0.01,
                       eval_seconds=0.001, tokens_per_s=1e5, peak_memory={"peak_rss_bytes": 2**20}, n_params=1000,
                       mfu=None, device="cpu", stopped_by="max_iters", warmup_steps=2, warmup_seconds=0.001,
                       compile="default", compile_reason=os.environ.get("TORCHINDUCTOR_CACHE_DIR", "unset"),
                       compile_seconds=1.5)
