"""Ending ``lanterne scan`` at once: what the scan made goes back to the system with the process.

A scan ends holding its last window (tens of thousands of records) and the catalogue: freeing
them object by object, then the interpreter's own teardown of every module, took 15 ms after the
summary was printed, for nothing, since the process ends there. ``leave`` ends it as the
interpreter would, minus that: the standard streams flushed, the ``atexit`` handlers run (the
decoding processes of a file never scanned are stopped there, logging is flushed), then
``os._exit`` with the command's status. ``keep`` holds an object until then (the last one given:
a scan of many files frees each file's window when the next one is kept, as before).

Only the console script arms it (``agent._entry``), for ``scan``, and only after the command has
returned or raised ``SystemExit``: a command run inside another program (tests, the daemon)
frees everything as usual.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

_kept: list[object] = []
"""At most one object: the last one ``keep`` was given."""
_armed = False


def arm() -> None:
    """This process ends with ``leave``: ``keep`` holds what it is given from now on."""
    global _armed  # noqa: PLW0603 - one switch per process
    _armed = True


def armed() -> bool:
    """Whether this process ends with ``leave``."""
    return _armed


def keep(item: object) -> None:
    """Hold ``item`` until the process ends, in place of what was held (when armed); nothing otherwise.

    The system frees it whole then. One object at most: memory stays bounded however many files
    a scan reads.
    """
    if _armed:
        _kept[:] = [item]


def status_of(exit_code: object) -> int:
    """The process status for a ``SystemExit`` code, as the interpreter makes it (text: printed, 1)."""
    if exit_code is None:
        return 0
    if isinstance(exit_code, int):
        return exit_code & 0xFF
    print(exit_code, file=sys.stderr)  # noqa: T201 - what the interpreter does with it
    return 1


def leave(status: int) -> NoReturn:
    """End the process now with ``status``: streams flushed, ``atexit`` handlers run, threads joined."""
    # What ``Py_Finalize`` does before it tears the interpreter down: wait for the threads that
    # are not daemons, then the ``atexit`` handlers.
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the handlers the interpreter would run at exit (CPython has it)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: as the interpreter, status 120
            status = status or 120
    os._exit(status)
