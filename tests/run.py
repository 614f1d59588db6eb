"""Run pytest and exit with its own status.

The Temporal SDK can abort the interpreter with exit code 134 while it shuts
down after a runtime was used (temporalio/sdk-python#300). The tests have
passed or failed by then; `os._exit` skips the shutdown that aborts, so the
exit code is always pytest's.
"""

import os
import sys

import pytest

if __name__ == "__main__":
    code = pytest.main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
