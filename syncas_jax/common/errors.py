"""The one exception type for problems with a user's input."""

from __future__ import annotations

import os


class InputError(Exception):
    """A problem with a user's input: the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
