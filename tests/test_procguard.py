"""unimoe.procguard: a child started under the watchdog ends when its parent is SIGKILLed (what keeps
Prefect's embedded server and torchrun jobs from outliving a killed run); one started plainly lives on."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import assert_processes_end
from unimoe.procguard import guarded_command

ROOT = Path(__file__).resolve().parents[1]
# The parent starts a long-sleeping child (guarded or not), prints its pid, then waits to be killed.
PARENT = """
import subprocess, sys, time
from unimoe.procguard import guarded_command
cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"]  # any long-running module
child = subprocess.Popen(guarded_command(cmd) if sys.argv[1] == "guarded" else cmd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def _orphan_after_parent_killed(mode: str) -> psutil.Process:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1.0)  # the child is up (and its watchdog running)
    assert child.is_running()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return child


def test_guarded_child_ends_with_its_killed_parent():
    assert_processes_end([_orphan_after_parent_killed("guarded")], timeout=15)


def test_unguarded_child_outlives_its_killed_parent():
    """The control: without the guard the orphan survives (what used to happen to the Prefect server)."""
    child = _orphan_after_parent_killed("plain")
    try:
        time.sleep(2.0)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    finally:
        child.kill()


def test_guarded_command_shape():
    cmd = guarded_command(["python", "-m", "uvicorn", "--port", "1"], parent=42)
    assert cmd == ["python", "-m", "unimoe.procguard", "42", "-m", "uvicorn", "--port", "1"]
    with pytest.raises(ValueError, match="-m"):
        guarded_command(["python", "script.py"])
