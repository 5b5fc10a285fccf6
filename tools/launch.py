"""The `heimdall-tools` entry point: a missing lab package is one line naming the extra, not a traceback.

The server installs alone (`pip install heimdall-dns`); the lab's packages
come with the `lab` extra. `--version` works either way.
"""

from __future__ import annotations

import importlib.util
import sys

from heimdall import __version__

# import name -> distribution name, for the packages every lab command imports
LAB_PACKAGES = {"typer": "typer", "rich": "rich", "psutil": "psutil", "hdrh": "hdrhistogram",
                "matplotlib": "matplotlib"}
EXIT_INPUT = 3  # tools/errors.py: an input error, never 2 ("inconclusive")


def missing_lab_packages() -> list[str]:
    return [dist for name, dist in LAB_PACKAGES.items() if importlib.util.find_spec(name) is None]


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        print(f"heimdall-tools {__version__}")
        return
    missing = missing_lab_packages()
    if missing:
        print(f"error: heimdall-tools needs the lab's packages ({', '.join(missing)}), which the server's "
              "install leaves out: pip install 'heimdall-dns[lab]'", file=sys.stderr)
        sys.exit(EXIT_INPUT)
    from tools.cli import main as run

    run()


if __name__ == "__main__":
    main()
