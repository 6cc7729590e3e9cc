"""Progress of a long management command, for whoever reads its output.

On a terminal one status line is rewritten in place, so closing a month over a
thousand teams fills one line, not a screen; lines worth keeping (a failure, a
summary) are printed above it. Anywhere else (a pipe, a log file, cron's mail)
only the kept lines appear, one plain line each, with no carriage returns or
escape codes. It lives in `portal` because commands of all three apps use it and
it knows nothing of their domain.
"""

from django.core.management.base import OutputWrapper

# Carriage return, then "erase to the end of the line": the status line is redrawn.
_REDRAW = "\r\x1b[K"


class Progress:
    def __init__(self, out: OutputWrapper, *, verbosity: int = 1) -> None:
        self.out = out
        self.quiet = verbosity < 1
        self.live = not self.quiet and out.isatty()
        self._status_shown = False

    def status(self, text: str) -> None:
        """Show `text` as the current status: on a terminal only, replacing the last one."""
        if not self.live:
            return
        self.out.write(_REDRAW + text, ending="")
        self.out.flush()
        self._status_shown = True

    def line(self, text: str) -> None:
        """Print a line that stays (on a terminal, above the status line)."""
        if self.quiet:
            return
        self.clear()
        self.out.write(text)
        self.out.flush()

    def clear(self) -> None:
        """Remove the status line, before the command prints its result."""
        if self._status_shown:
            self.out.write(_REDRAW, ending="")
            self.out.flush()
            self._status_shown = False
