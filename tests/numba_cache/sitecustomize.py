"""A numba cache folder of its own for every Python process the test suite starts.

Why: a gufunc loaded from a numba cache that other processes also wrote can have a NULL kernel
(SIGSEGV in librosa's cached gufuncs; numba issue 10128), and the suite runs processes side by side
(pytest-xdist workers, flows and CLIs in subprocesses, Dask workers). tests/conftest.py sets
``UNIMOE_NUMBA_CACHE=per-process`` and puts this folder on ``PYTHONPATH``, so Python runs this file at
the start of every such process (``site`` imports ``sitecustomize``; coverage.py reaches subprocesses
the same way). Outside the test suite nothing sets the variable and numba's default cache is used.
"""

import os


def use_own_numba_cache() -> None:
    """Point ``NUMBA_CACHE_DIR`` at a fresh folder, removed at exit (once per process)."""
    if os.environ.get("UNIMOE_NUMBA_CACHE") != "per-process" or \
            os.environ.get("UNIMOE_NUMBA_CACHE_PID") == str(os.getpid()):
        return
    import atexit
    import shutil
    import tempfile

    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="unimoe-numba-")
    os.environ["UNIMOE_NUMBA_CACHE_PID"] = str(os.getpid())
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)


use_own_numba_cache()
