"""The `dkt` command line: builds the parser from one module per command and dispatches."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any

from dkt import __version__


def suggestion(word: str, candidates: list[str]) -> str | None:
    """The candidate closest to a mistyped `word`, if one is close enough."""
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose "invalid choice" errors add "did you mean ...?" (Python
    3.11's argparse does not); subcommand parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = suggestion(found.group(1), choices)
            if close is not None:
                message += f"; did you mean '{close}'?"
        super().error(message)

    def unrecognized(self, extras: list[str]):  # -> NoReturn
        """Exit 2 for arguments this parser does not know, suggesting the closest option."""
        # Compared without the dashes, which every option shares.
        options = {o[2:]: o for o in self._option_string_actions if o.startswith("--")}
        hints = []
        for token in extras:
            name = token.split("=", 1)[0]
            close = suggestion(name.lstrip("-"), list(options)) if name.startswith("-") else None
            if close is not None:
                hints.append((name, options[close]))
        message = f"unrecognized arguments: {' '.join(extras)}"
        if len(hints) == 1:
            message += f"; did you mean {hints[0][1]}?"
        elif hints:
            message += "; did you mean " + ", ".join(f"{c} for {n}" for n, c in hints) + "?"
        argparse.ArgumentParser.error(self, message)


def build_parser() -> argparse.ArgumentParser:
    from dkt.cli.agent import add_agent_parser
    from dkt.cli.compare import add_compare_parser
    from dkt.cli.keys import add_keys_parser
    from dkt.cli.launch import add_launch_parser
    from dkt.cli.relay import add_relay_parser
    from dkt.cli.run import add_run_parser
    from dkt.cli.server import add_server_parser
    from dkt.cli.simulate import add_simulate_parser
    from dkt.cli.status import add_status_parser

    parser = SuggestingParser(
        prog="dkt",
        description="Distributed Knowledge Transfer for Distributed Continual Learning.",
    )
    parser.add_argument("--version", action="version", version=f"dkt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_simulate_parser(sub)

    add_compare_parser(sub)
    add_run_parser(sub)
    add_server_parser(sub)
    add_agent_parser(sub)
    add_launch_parser(sub)
    add_relay_parser(sub)
    add_status_parser(sub)
    add_keys_parser(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The parser of the (sub)subcommand `args` were parsed for (`dkt keys init`: init's)."""
    while True:
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, commands[0].dest, None) if commands else None
        if chosen is None:
            return parser
        parser = commands[0].choices[chosen]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # as parse_args, but from the (sub)command's own parser, with a suggestion
        _command_parser(parser, args).unrecognized(extras)
    # The command line as given, for the results' provenance.
    args.argv = ["dkt", *(sys.argv[1:] if argv is None else argv)]
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        hint = "; resume with the same command and --resume" if args.command == "simulate" else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"dkt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import httpx

        from dkt.proto.relay_client import RelayError

        if isinstance(exc, RelayError):
            print(f"dkt {args.command}: relay error: {exc}", file=sys.stderr)
        elif isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 403:
            print(f"dkt {args.command}: the server refused the call (403 Forbidden at "
                  f"{exc.request.url.path}): its Control API takes only operators with a "
                  "client certificate; give --keys OPERATOR_KIT (from `dkt keys init`) or "
                  "--client-cert and --client-key", file=sys.stderr)  # fmt: skip
        elif isinstance(exc, httpx.HTTPError):
            print(f"dkt {args.command}: cannot reach the Flower SuperLink ({exc}); is "
                  "`dkt server` running there, and is the port open?", file=sys.stderr)  # fmt: skip
        elif isinstance(exc, RuntimeError | TimeoutError | OSError):
            print(f"dkt {args.command}: error: {exc}", file=sys.stderr)
        else:
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
