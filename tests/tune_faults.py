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
