"""The heimdall-tools commands, one module per command (or command group), named after it.

Each module owns its typer functions and a `register(app)`; `tools.cli`
calls them in the order `--help` lists the commands. Command bodies import
BCC, the probes and matplotlib lazily so `--help` stays fast and works
where BCC is missing.
"""
