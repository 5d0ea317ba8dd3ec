"""Progress reporting that can be cancelled, for long in-process work (no Qt).

Backend functions take ``progress(fraction 0..1, message)``; a :class:`ProgressRelay`
forwards each call (the widget's hook updates a progress bar and processes GUI events) and
raises :class:`Cancelled` at the next call after :meth:`ProgressRelay.cancel`.
"""

from __future__ import annotations

from MSKdeXTraining.progress import Progress

#: QProgressBar's own format: the percentage.
PERCENT_FORMAT = "%p%"


def bar_format(text: str) -> str:
    """A QProgressBar format showing ``text`` then the percentage. QProgressBar replaces ``%p``,
    ``%v`` and ``%m`` anywhere in its format and has no escape (``%%`` shows as is), so each
    ``%`` of ``text`` is followed by a word joiner (U+2060, invisible) that keeps it literal."""
    return text.replace("%", "%\u2060") + " " + PERCENT_FORMAT


class Cancelled(RuntimeError):
    """The user stopped the work."""


class ProgressRelay:
    """A ``progress(fraction, message)`` callback that forwards to ``report`` and can be cancelled."""

    def __init__(self, report: Progress | None = None):
        self.report = report
        self.cancelled = False
        self.fraction = 0.0
        self.message = ""

    def cancel(self) -> None:
        """Make the next progress call raise :class:`Cancelled`."""
        self.cancelled = True

    def __call__(self, fraction: float, message: str) -> None:
        self._stop_if_cancelled()
        self.fraction, self.message = float(fraction), str(message)
        if self.report is not None:
            self.report(self.fraction, self.message)
            self._stop_if_cancelled()  # the report may process GUI events: Cancel, a scene close

    def _stop_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(f"cancelled at {100 * self.fraction:.0f} % ({self.message})")
