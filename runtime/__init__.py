"""What the worker and the client share at run time: settings, logging, the Temporal
connection and the embedded dev server."""

import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Exit with `code`, skipping the interpreter's shutdown.

    The Temporal SDK can abort the interpreter (SIGABRT, exit code 134) while it
    shuts down after a Temporal runtime was used (temporalio/sdk-python#300). By
    the time a command or worker exits, its work is done and its output is
    flushed here, so the exit code a caller sees is always the real one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
