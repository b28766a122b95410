"""The command line: argument parsing only; every command calls the Python API and prints.

Each subcommand is a module here with add_parser(subparsers) and run(args) -> exit code (rules.py states
the rule). Building the parser imports no torch: --help, --version and argument errors answer at once;
a command's module imports the heavy libraries inside run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from typing import NoReturn

from ..errors import UserInputError
from .rules import PROG, Tally, error, one_line

#: subcommand modules, in the order `--help` lists them
COMMANDS = [
    "classify",  # images among candidate labels (pipeline.py)
    "demo",  # the bundled MNIST model on its held-out digits
    "eval",  # a dataset into a resumable run directory (runs/evaluation.py)
    "report",  # tables and figures of run directories (reporting/report.py, reporting/figures.py)
    "calibrate",  # timestep weights and temperature from labelled images (reporting/fitting.py)
    "winoground",  # compositional image-text matching (matching/winoground.py)
    "match",  # the score matrix of images x captions (matching/scores.py)
    "bench",  # throughput: reference setting vs fast path (bench/throughput.py, models/fast.py)
    "train",  # the class-conditional MNIST model (training/train.py)
    "models",  # the supported model families and aliases (models/)
    "serve",  # the web page (web/)
]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`diffusion-classifier classify: error: ... (see --help)`), exit 2.

    add_subparsers makes the subcommands' parsers of this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        """As argparse's, but a flag the command does not know is that command's error (its --help lists them)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.command_parser(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def command_parser(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        """The parser of the subcommand that ns holds, else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and getattr(ns, action.dest, None) in action.choices:
                return action.choices[getattr(ns, action.dest)]
        return self


def package_version() -> str:
    """The package's version (pyproject.toml reads it from diffusion_classifier.__version__ too)."""
    from .. import __version__

    return __version__


def add_common_flags(p: argparse.ArgumentParser, default=False) -> None:
    """-v and -q, before the command or after it (a subcommand's copies default to SUPPRESS so that they
    never overwrite what was given before the command)."""
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log what the library does")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars or notes on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Zero-shot image classification with a pretrained diffusion model (Li et al., ICCV 2023). "
        "Exit codes: 0 all done, 1 some inputs failed (one line each on stderr), 2 nothing done or a usage "
        "error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    for command in sub.choices.values():
        add_common_flags(command, default=argparse.SUPPRESS)
    return parser


def quiet_libraries() -> None:
    """Keep stderr for our progress and errors: no weight-loading bars or config nags from the HF libraries.

    Through their environment variables, read when they are imported (importing them here would cost seconds
    before the first error message); a library already imported (the Python API, tests) is told directly.
    """
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the hub's and transformers' bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            lib = importlib.import_module(f"{name}.utils.logging")
            lib.set_verbosity_error()
            lib.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        quiet_libraries()
    args.tally = Tally()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers, not at interpreter exit
        return code
    except UserInputError as exc:
        error(exc)
        return args.tally.code_after_error()
    except KeyboardInterrupt:
        error("interrupted (finished work is kept; rerun the same command to resume where it keeps records)")
        return 130
    except BrokenPipeError:
        return stdout_closed()
    except OSError as exc:  # disk full, permission denied, ...: the system's words and the file
        error(os_error_message(exc))
        return args.tally.code_after_error()
    except Exception as exc:  # the last resort: a bug or a case we did not foresee, still one line
        if args.verbose:
            traceback.print_exc()
        error(f"unexpected {exc.__class__.__name__}: {exc}" + ("" if args.verbose else " (rerun with -v for details)"))
        return args.tally.code_after_error()


def stdout_closed() -> int:
    """The reader of stdout went away (`| head -1`): stop quietly, as Python's docs advise (SIGPIPE notes)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # else the interpreter's last flush raises again
    except (OSError, ValueError):  # stdout is no file (captured in-process): nothing to silence
        pass
    return 0


def os_error_message(exc: OSError) -> str:
    """The system's words and the file: "No space left on device: runs/x/records.jsonl"."""
    if exc.strerror is None:
        return f"{exc.__class__.__name__}: {exc}"
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{exc.strerror}{where} (check the path, its permissions and the free space)"
