"""How long an evaluation will take, said before it starts, and how far it is while it runs.

The importance-weighted bound decodes k codes for each of n digits (bounds.importance_bounds), which is all
of an evaluation's time at large k: 100,000 samples of the tutorial's decoder take about a minute per digit
on two cores. `Clock` times one decoder call of the size the bound makes (after an untimed one that traces
it), says the size of the evaluation and its estimated time in one line, refuses one longer than a limit
(EvaluationTooLong, a one-line error), and then shows the progress: Keras's progress bar with the time
left in a terminal or a notebook, a line at every tenth elsewhere (a sweep's log file) when it takes over a minute.
"""

import math
import sys
import time
from typing import Optional, TextIO

from vae_kl.process import exits
from vae_kl.process.notebook import in_notebook

SHOW_AFTER_SECONDS = 5.0  # An evaluation estimated shorter than this runs without a word.
LINES_AFTER_SECONDS = 60.0  # Outside a terminal, an evaluation estimated longer than this writes progress lines:
LINES_ELSEWHERE = 10  # this many (a shorter one says its estimate alone).


class EvaluationTooLong(exits.UserError):
    """An evaluation whose estimate is above the limit the user set: refused before it runs."""


def duration_text(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h': an estimate, rounded as one."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class Clock:
    """The progress of one evaluation of n digits with k importance samples, counted in decoded codes.

    Args:
        digits, k: the evaluation's size (the bound decodes digits·k codes, decoder_use digits more).
        limit_minutes: refuse an estimate above this (None: no limit; train.py's own evaluation has none).
        hint: how to make it shorter, for the refusal ("evaluate fewer digits with --digits N").
    """

    def __init__(self, digits: int, k: int, limit_minutes: Optional[float] = None, hint: str = "",
                 out: Optional[TextIO] = None):
        self.digits, self.k, self.limit_minutes, self.hint = digits, k, limit_minutes, hint
        self.out = out or sys.stdout
        self.total = digits * k + digits
        self.done, self.bar, self.lines, self.started, self.visible, self.long = 0, None, 0, None, False, False

    def calibrate(self, seconds_per_code: float, measured_on: str) -> None:
        """Say the estimate (or refuse it, EvaluationTooLong) from the seconds one decoded code took."""
        estimate = seconds_per_code * self.total
        size = f"{self.digits} digit{'s' if self.digits != 1 else ''} with k = {self.k:,} importance samples"
        if self.limit_minutes is not None and estimate > self.limit_minutes * 60:
            raise EvaluationTooLong(
                f"evaluating {size} would take about {duration_text(estimate)} ({measured_on}), more than the "
                f"{self.limit_minutes:g} min allowed; {self.hint or 'evaluate fewer digits or lower k'}.")
        self.started, self.visible = time.perf_counter(), estimate >= SHOW_AFTER_SECONDS
        self.long = estimate >= LINES_AFTER_SECONDS
        if self.visible:
            print(f"Evaluating {size}: about {duration_text(estimate)} ({measured_on}).", file=self.out, flush=True)
            if self.interactive():
                import keras  # The evaluation has loaded it already.

                self.bar = keras.utils.Progbar(self.digits, unit_name="digit", interval=0.5)

    def interactive(self) -> bool:
        return (hasattr(self.out, "isatty") and self.out.isatty()) or in_notebook()

    def advance(self, codes: int) -> None:
        """codes more were decoded."""
        self.done = min(self.total, self.done + codes)
        if not self.visible:
            return
        digits = min(self.digits, self.done // self.k)  # The bound's k codes a digit, then n more (decoder_use).
        if self.bar is not None:
            self.bar.update(digits)
            return
        tenth = math.floor(LINES_ELSEWHERE * self.done / self.total)
        if self.long and tenth > self.lines and self.done < self.total:
            self.lines = tenth
            elapsed = time.perf_counter() - self.started
            left = elapsed / self.done * (self.total - self.done)
            print(f"  {10 * tenth} % ({digits} of {self.digits} digits), about {duration_text(left)} left",
                  file=self.out, flush=True)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.update(self.digits, finalize=True)
            self.bar = None
