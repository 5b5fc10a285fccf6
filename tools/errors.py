"""Exit statuses and the one error type every heimdall-tools command raises.

Commands raise ToolError for anything a user can fix (bad input, missing
baseline, probes that cannot attach, a pid that is gone); `cli.main` prints
its message on one line and exits with its status, never a traceback.
"""

EXIT_OK = 0
EXIT_REGRESSION = 1      # check: a real regression; load: the run failed (no answers)
EXIT_INCONCLUSIVE = 2    # check: too noisy to tell, and nothing else
EXIT_ENVIRONMENT = 3     # probes unavailable, missing baseline, unreadable file, server not answering
EXIT_USAGE = 3           # an unknown option or a bad value: an input error like the others
EXIT_TARGET = 4          # the target pid does not exist or exited before the window opened


class ToolError(Exception):
    """A user-facing failure: one line of text and an exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_ENVIRONMENT) -> None:
        super().__init__(message)
        self.exit_code = exit_code
