"""Prefect's embedded (ephemeral) API server ends with the process that started it, whatever kills it.

Prefect starts the ephemeral server as a child process (``python -m uvicorn ...``) and stops it from an
exit handler; a run killed with SIGKILL never runs that handler, so the server lives on for good,
re-parented to init, holding ~200 MB and a loopback port. ``guard_ephemeral_server()`` makes Prefect
start it under ``unimoe.procguard``'s parent watchdog instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import subprocess
import sys

from unimoe.procguard import guarded_command


class _GuardedSubprocess:
    """Stands in for the ``subprocess`` module inside ``prefect.server.api.server`` only: its ``Popen``
    starts the uvicorn server under this module's watchdog; everything else is the real module."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802 (the name it replaces)
        argv = list(kwargs.pop("args") if "args" in kwargs else args[0])
        if argv[1:3] == ["-m", "uvicorn"]:
            argv = guarded_command(argv)
        return subprocess.Popen(argv, *args[1:], **kwargs)


SERVER_MODULE = "prefect.server.api.server"


def _patch(module) -> None:
    if not isinstance(getattr(module, "subprocess", None), _GuardedSubprocess):
        module.subprocess = _GuardedSubprocess()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches Prefect's server module when something first imports it (importing it up front would
    cost every CLI command seconds, and most never start a server)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != SERVER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def guard_ephemeral_server() -> None:
    """Route Prefect's ephemeral server start-up through the watchdog (idempotent)."""
    if SERVER_MODULE in sys.modules:
        _patch(sys.modules[SERVER_MODULE])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
