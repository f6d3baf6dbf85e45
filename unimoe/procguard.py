"""Run a Python module as a child that ends with its parent, whatever kills the parent.

``python -m unimoe.procguard PARENT_PID -m MODULE ARGS...`` runs ``MODULE`` (as ``python -m`` would)
with a watchdog thread that notices when the parent is gone (``os.getppid()`` changes: the child was
re-parented) and sends the process SIGTERM (the module's graceful shutdown: uvicorn stops serving,
torchrun's agent stops its workers), then exits hard if that hangs.

Why: a run killed with SIGKILL (or by the OOM killer) runs no exit handler, so the helper processes it
started (Prefect's embedded API server, a torchrun job) would otherwise live on for good, holding ports,
memory, and a stage's checkpoint directory that a resumed run then writes concurrently. A watchdog
rather than Linux's ``PR_SET_PDEATHSIG``: the death signal fires when the *thread* that forked the child
exits, and libraries may start children from short-lived worker threads.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 10.0


def guarded_command(argv: list[str], parent: int | None = None) -> list[str]:
    """``[python, -m, module, ...]`` as the same command under the watchdog of ``parent`` (default: this
    process)."""
    if len(argv) < 3 or argv[1] != "-m":
        raise ValueError(f"expected [python, '-m', module, ...], got {argv[:3]}")
    return [argv[0], "-m", "unimoe.procguard", str(os.getpid() if parent is None else parent), *argv[1:]]


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os._exit(1)


def watch_parent(parent: int | None = None) -> None:
    """End this process once ``parent`` (default: the current parent) is gone: a daemon watchdog thread.
    For worker processes a library starts itself (e.g. a ``ProcessPoolExecutor`` initializer)."""
    parent = os.getppid() if parent is None else parent
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        sys.exit("usage: python -m unimoe.procguard PARENT_PID -m MODULE [ARGS...]")
    parent, module, args = int(argv[0]), argv[2], argv[3:]
    if os.getppid() != parent:  # the parent died before we got here
        sys.exit(1)
    watch_parent(parent)
    import runpy

    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
