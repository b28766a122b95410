"""The rule every command follows: exit codes from counts, one line per problem, progress only on a terminal.

Exit codes: 0 everything asked was done; 1 some inputs failed and the rest were done; 2 nothing could be
done, or a usage error; 130 interrupted. Each failure is one line on stderr: `diffusion-classifier: error: ...`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from .. import strict_json

PROG = "diffusion-classifier"


def exit_code(done: int, failed: int) -> int:
    """0 when nothing failed, 1 when some inputs failed and others were done, 2 when every input failed."""
    if not failed:
        return 0
    return 1 if done else 2


def one_line(message: object) -> str:
    """The message on one line (a newline in a file name or a library's message becomes a space)."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def error(message: object) -> None:
    """`diffusion-classifier: error: ...` on stderr, one line whatever the message holds."""
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)


@dataclass
class Tally:
    """What a command has done so far. main puts one on every command's args; after an unexpected error it
    exits 1 instead of 2 when some work was done (and kept) before it."""

    done: int = 0
    failed: int = 0

    def fail(self, message: object) -> None:
        """One input failed: its line on stderr; the command goes on with the others."""
        error(message)
        self.failed += 1

    def code(self) -> int:
        return exit_code(self.done, self.failed)

    def code_after_error(self) -> int:
        """The command stopped on an error: 1 when it had finished some inputs, else 2."""
        return 1 if self.done else 2


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr only when it is a terminal (never into a log file) and -q is not given."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def print_json(obj: Any) -> None:
    """One line of standard JSON on stdout (non-finite numbers become null: strict_json.py)."""
    print(strict_json.dumps(obj), flush=True)
