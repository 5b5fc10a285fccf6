"""`heimdall` command line: `heimdall serve [flags]`; every flag is also a HEIMDALL_* variable."""

from __future__ import annotations

import signal
import sys
from typing import Sequence

from heimdall import __version__
from heimdall.config import ConfigError, build_parser, load_config

USAGE = "usage: heimdall serve [--help] [flags] | heimdall config check FILE   (heimdall --version)"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        print("\nCommands:\n  serve         answer DNS on UDP and TCP: caching, forwarding (heimdall serve --help)"
              "\n  config check  report every error of a TOML configuration file as FILE:LINE (exit 2)"
              "\n  config example  print every setting at its default, documented (heimdall.example.toml)")
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"heimdall {__version__}")
        sys.exit(0)
    if args[0] == "config":
        sys.exit(config_command(args[1:]))
    if args[0] != "serve":
        print(f"error: unknown command {args[0]!r}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    if any(a in ("-h", "--help") for a in args[1:]):
        build_parser().print_help()
        sys.exit(0)
    # A reload request (SIGHUP) that lands while the server imports and loads its lists
    # must not kill it: ignored until the worker installs its reload handler. What is
    # left of the window is the interpreter's own start, before any of our code runs.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        config = load_config(args[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_serve(config))


def config_command(args: list[str]) -> int:
    """`heimdall config check FILE`: 0 and one line when the file is good, else every problem and 2.

    `heimdall config example`: every setting at its default, documented (heimdall.example.toml).
    """
    from heimdall import configfile

    if args == ["example"]:
        print(configfile.example(), end="")
        return 0
    if len(args) != 2 or args[0] != "check":
        print("usage: heimdall config check FILE | heimdall config example", file=sys.stderr)
        return 2
    path = args[1]
    try:
        settings = configfile.read(path)
        load_config(["--config", path], {}).validate()
    except configfile.ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: ok ({len(settings)} settings)")
    return 0


def run_serve(config) -> int:
    """Serve until a signal; startup problems become one line and a non-zero status."""
    from heimdall.supervisor import StartupError, serve

    try:
        return serve(config)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # ToolError from the demo upstream, and the like
        if type(exc).__name__ == "ToolError":
            print(f"error: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    main()
