"""The user's process: the `ladder` commands (`app`), following a job, and a ladder's status and stop from outside.

`ladder = "ladder.cli:main"` and `python -m ladder.cli` both start `main` (which runs `app`)."""
from ladder.cli.app import app, main

__all__ = ["app", "main"]
