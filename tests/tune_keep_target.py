"""Stand-ins for gptcore.train.train that "train" at once but return a real model and optimizer, so the trial
saves a real checkpoint (tests/test_keep_models.py)."""


def instant(model_cfg, train_cfg, data, **kwargs):
    """Loss 100 x the learning rate, plus 1e-4 x the seed: re-runs keep the single runs' order."""
    return _result(model_cfg, train_cfg, 100 * train_cfg.learning_rate + 1e-4 * train_cfg.seed)


def crossing(model_cfg, train_cfg, data, **kwargs):
    """L, 2 - L, 4 - 3L for seeds 0, 1, 2 (L = 100 x the learning rate): the best mean is the worst single run
    among the confirmed (as tests/tune_faults.py's crossing)."""
    base = 100 * train_cfg.learning_rate
    return _result(model_cfg, train_cfg, base + 2 * train_cfg.seed * (1 - base))


def _result(model_cfg, train_cfg, loss):
    """A tiny untrained model at its step budget, with this loss."""
    import torch

    from gptcore.model import build_model
    from gptcore.train import EvalPoint, TrainResult, configure_optimizer

    model = build_model(model_cfg)
    optimizer = configure_optimizer(model, train_cfg, torch.device("cpu"))
    steps = train_cfg.max_iters or 100
    return TrainResult(history=[EvalPoint(steps, loss, loss, 0.01)], steps=steps,
                       tokens=steps * train_cfg.batch_size * model_cfg.block_size, train_seconds=0.01,
                       eval_seconds=0.001, tokens_per_s=1e5, peak_memory={"peak_rss_bytes": 2**20},
                       n_params=sum(p.numel() for p in model.parameters()), mfu=None, device="cpu",
                       stopped_by="max_iters", warmup_steps=2, warmup_seconds=0.001, model=model, optimizer=optimizer)
