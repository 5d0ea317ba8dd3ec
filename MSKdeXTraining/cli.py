"""``mskdex`` command line: one subcommand per module in :mod:`MSKdeXTraining.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches. Bad input (:data:`~.errors.INPUT_ERRORS`:
invalid files, fields and values; a missing input; an output that exists or would overwrite an
input) and an output that cannot be written (:data:`~.errors.STORAGE_ERRNOS`) are printed as
one clear line with exit code 2; anything else is a bug and keeps its traceback. MSKdeX's own
warnings (e.g. an assumed source distance) print as ``mskdex COMMAND: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .errors import INPUT_ERRORS, STORAGE_ERRNOS, MSKdeXWarning
from .fileio import check_utf8_path

#: Subcommands in the order a user meets them.
COMMANDS = ("drr", "cohort", "assemble", "register", "prepare", "train", "calibrate", "decompose", "evaluate",
            "ablation", "demo")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it says something (not None, not already in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or action.default == [] \
                or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``mskdex`` parser; with ``only``, the options of that subcommand alone (the others'
    option definitions import heavy modules: ``mskdex --help`` needs none of them)."""
    parser = argparse.ArgumentParser(
        prog="mskdex", description="MSKdeX: musculoskeletal decomposition of hip radiographs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP,
                           formatter_class=_HelpFormatter)
        if only is None or name == only:
            module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=command).parse_args(argv)
    try:
        for name, value in vars(args).items():  # before any work: SimpleITK aborts on such a path
            for path in value if isinstance(value, list) else [value]:
                if isinstance(path, Path):
                    check_utf8_path(path, f"--{name.replace('_', '-')}")
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(args.command, warnings.showwarning)
            return int(args.handler(args) or 0)
    except INPUT_ERRORS as e:
        print(f"mskdex {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        print(f"mskdex {args.command}: error: cannot write {e.filename or 'the output'}: {e.strerror}; "
              "choose an output folder on a writable disk with room", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mskdex {args.command}: interrupted; finished work is kept: run the same command "
              "again to resume (train: add --resume)", file=sys.stderr)
        return 130


def _warning_printer(command: str, show_other: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints MSKdeX's own warnings (:class:`~.errors.MSKdeXWarning`)
    as one line naming the command, not the source line that raised them (on a line of its own:
    a progress bar is cleared, then drawn again below it), and passes the others to ``show_other``."""
    from tqdm import tqdm

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, MSKdeXWarning):
            with tqdm.external_write_mode(file=file or sys.stderr):
                print(f"mskdex {command}: warning: {message}", file=file or sys.stderr)
        else:
            show_other(message, category, filename, lineno, file, line)
    return show


if __name__ == "__main__":
    sys.exit(main())
