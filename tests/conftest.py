"""Shared fixtures: the tiny preset, a tokenizer trained once per session, a seeded tiny model."""

import os
import runpy
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every test process and every Python subprocess it starts gets a numba cache folder of its own
# (tests/numba_cache/sitecustomize.py says why): subprocesses run it at start-up from PYTHONPATH,
# this process runs it now.
_NUMBA_SITE = Path(__file__).resolve().parent / "numba_cache"
os.environ["UNIMOE_NUMBA_CACHE"] = "per-process"
if str(_NUMBA_SITE) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_NUMBA_SITE), os.environ.get("PYTHONPATH")]))
runpy.run_path(str(_NUMBA_SITE / "sitecustomize.py"))

import numpy as np
import pytest
import torch

# Two pytest workers share two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a calm piano melody in c major at ninety beats per minute",
    "an energetic string quartet in d minor",
    "hello world, this is a speech synthesis test",
    "你好世界，今天天气很好",
    "我们一起去公园散步吧",
] * 10


@pytest.fixture(scope="session")
def tiny_cfg():
    from unimoe.config import tiny_preset

    return tiny_preset()


@pytest.fixture(scope="session")
def tokenizer():
    from unimoe.tokenizer import TextTokenizer

    return TextTokenizer.train(CORPUS, 300)


@pytest.fixture(scope="session")
def builder(tiny_cfg, tokenizer):
    from unimoe.sequence import SequenceBuilder

    return SequenceBuilder(tiny_cfg, tokenizer)


@pytest.fixture()
def tiny_model(tiny_cfg):
    from unimoe.model import UniMoEAudio

    torch.manual_seed(0)
    return UniMoEAudio(tiny_cfg).eval()


def random_codes(k: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1024, (k, t), generator=torch.Generator().manual_seed(seed))


def random_video(seed: int = 0, frames: int = 4, size: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _prefect_console_on_an_open_stream():
    """Prefect binds its console log handler to the sys.stderr of the moment it configures logging; a test
    that first imported Prefect inside typer's CliRunner leaves the handler on CliRunner's closed stream,
    and every later flow run in the process then fails on its first log line. Rebind such handlers."""
    import logging
    import sys

    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import PrefectConsoleHandler

        loggers = [logging.getLogger()] + [v for v in logging.root.manager.loggerDict.values()
                                           if isinstance(v, logging.Logger)]
        for lg in loggers:
            for h in lg.handlers:
                if isinstance(h, PrefectConsoleHandler) and getattr(h.console.file, "closed", False):
                    h.console.file = sys.stderr
    yield


def assert_processes_end(procs, timeout: float = 30.0) -> None:
    """Every process in ``procs`` (psutil.Process, e.g. a killed run's descendants recorded before the
    kill) has exited within ``timeout`` seconds; a survivor fails with its command line and is killed."""
    import psutil

    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    for p in alive:
        try:
            cmd = " ".join(p.cmdline())[:300]
            p.kill()
        except psutil.Error:
            continue
        raise AssertionError(f"process {p.pid} of the killed run still alive {timeout:.0f} s later: {cmd}")
