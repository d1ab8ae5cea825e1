"""The `apg` command: one tool, three subcommands.

    apg compare ...                        grid of guidance methods and scales from the same seeds (apg.compare)
    apg eval generate|score|sweep|report|stats ...   evaluation: FID, saturation, clipping (also `apg-eval`)
    apg app [--port 7860]                  the Gradio app (needs apg-diffusers[app])

Every command reports a user error (an apg.errors.ApgError) as one line, `apg <command>: error: <message>`,
with exit code 2, before it loads a model where the error is in the arguments; anything else is a bug and
shows Python's traceback. `--traceback` prints the traceback of a user error too. See docs/cli.md.
"""

from __future__ import annotations

import sys

from ._options import ArgumentParser, CommandError, add_traceback_option, run_guarded

# Subcommands that parse their own arguments: name -> help.
_PASS_THROUGH = {
    "eval": "evaluation: generate, score, sweep, report, stats (the same as apg-eval)",
    "app": "the Gradio app: two methods side by side on the same seeds (needs apg-diffusers[app])",
}


def build_parser() -> ArgumentParser:
    from . import compare

    parser = ArgumentParser(prog="apg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {"compare": sub.add_parser("compare", help=compare.__doc__.splitlines()[0].split(": ", 1)[1],
                                                 description=compare.__doc__)}
    compare.add_arguments(parser.commands["compare"])
    add_traceback_option(parser.commands["compare"])
    for name, text in _PASS_THROUGH.items():
        sub.add_parser(name, add_help=False, help=text)
    return parser


def _app(argv) -> int:
    try:
        from .app import main as app_main
    except ImportError as error:
        if getattr(error, "name", "") in ("gradio", "gradio_client"):
            raise CommandError("the app needs Gradio: pip install 'apg-diffusers[app]'") from None
        raise
    return app_main(argv) or 0


def _compare(argv) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them as the top-level parser's, not the command's
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    from .compare import run

    return run_guarded("apg compare", lambda: run(args), args.traceback)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    if command == "eval":
        from .evaluation.cli import main as evaluate

        return evaluate(argv[1:], prog="apg eval")
    if command == "app":
        return run_guarded("apg app", lambda: _app(argv[1:]), "--traceback" in argv)
    return _compare(argv)


if __name__ == "__main__":
    sys.exit(main())
