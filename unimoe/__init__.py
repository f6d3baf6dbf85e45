"""unimoe package."""

import os as _os

# Workaround for numba issue 10128: a gufunc loaded from a numba cache that other processes also wrote
# can have a NULL kernel (SIGSEGV in librosa's cached gufuncs). UNIMOE_NUMBA_CACHE=per-process gives
# this process a fresh cache folder of its own (the test suite sets it; its subprocesses inherit it).
if _os.environ.get("UNIMOE_NUMBA_CACHE") == "per-process" and \
        _os.environ.get("UNIMOE_NUMBA_CACHE_PID") != str(_os.getpid()):
    import atexit as _atexit
    import shutil as _shutil
    import tempfile as _tempfile

    _os.environ["NUMBA_CACHE_DIR"] = _tempfile.mkdtemp(prefix="unimoe-numba-")
    _os.environ["UNIMOE_NUMBA_CACHE_PID"] = str(_os.getpid())
    _atexit.register(_shutil.rmtree, _os.environ["NUMBA_CACHE_DIR"], True)
