"""User-facing errors: a bad path, list, image or flag stops the run with one line that says what to do.

`UserError` carries such a message; `run_main` wraps a stage's `main` so that the user sees that line
(and exit status 2) instead of a traceback from deep inside a library.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """An input the user can fix (missing file, malformed list, corrupt image...)."""


def run_main(main: Callable[[], object]) -> None:
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
