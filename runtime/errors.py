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


class Terminated(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C), unwound like KeyboardInterrupt.

    A subclass and not KeyboardInterrupt itself because, under `python -m`, CPython ends the process "killed by
    SIGINT" (status -2, whatever `sys.exit` said) once exactly KeyboardInterrupt has left code run through
    PyRun_String, which torch's pybind11 `py::exec` uses while tracing; that check compares the type by identity.
    """


def install_sigterm_as_interrupt() -> None:
    """`kill` (SIGTERM) and Ctrl-C unwind as `Terminated`: temporary files are removed, the CLI says what was
    written and exits with its documented code (130)."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # leave an embedding app's handler alone
            signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (embedded use): keep the default
        pass
