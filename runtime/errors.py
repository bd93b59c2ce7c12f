"""User-facing errors: raised for bad input, printed by the CLIs as one paragraph without a traceback."""


class ZsdError(Exception):
    """A problem the user can fix (bad file, wrong shape, missing library).

    The message names the problem and the fix in one paragraph; CLIs print it and exit with `exit_code`.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


def install_sigterm_as_interrupt() -> None:
    """`kill` (SIGTERM) unwinds like Ctrl-C: temporary files are removed and the CLI says what was written."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): keep the default
        pass
