"""``%time`` and ``%timeit`` as Jupyter prints them, within a time budget.

The lines follow IPython's ``execution.py`` word for word ("CPU times: user 1.2 ms,
sys: 0 ns, total: 1.2 ms", "Wall time: 3.4 ms", "7.5 µs ± 120 ns per loop (mean ±
std. dev. of 7 runs, 100,000 loops each)"): a model reads them as it would in a
notebook.  Unlike IPython, ``%timeit`` stops auto-ranging and repeating once it has
spent ``TIMEIT_BUDGET_S``, so a slow statement costs a few seconds of the run's wall
time, not 7 x 10 of them; the line then says how many runs it made.
"""

from __future__ import annotations

import math
import resource
import time
import timeit as stdlib_timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# All of one %timeit's runs together, auto-ranging included: well inside a run's
# default wall time, long enough for seven runs of anything under a quarter second.
TIMEIT_BUDGET_S = 2.0
# IPython's auto-ranging target: loops are added until one run lasts this long.
_RUN_TARGET_S = 0.2
_DEFAULT_REPEAT = 7


def format_time(seconds: float, precision: int = 3) -> str:
    """A duration as IPython's ``_format_time`` writes it: '3.81 µs', '1min 5s'."""
    if seconds >= 60.0:
        parts = []
        left = seconds
        for suffix, length in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            value = int(left / length)
            if value > 0:
                left = left % length
                parts.append(f"{value}{suffix}")
            if left < 1:
                break
        return " ".join(parts)
    units = ("s", "ms", "\N{MICRO SIGN}s", "ns")
    order = min(-(math.floor(math.log10(seconds)) // 3), 3) if seconds > 0.0 else 3
    return "%.*g %s" % (precision, seconds * 1000**order, units[order])  # noqa: UP031 - IPython's own format


def _cpu_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def time_call(run: Callable[[], T]) -> T:
    """Run ``run`` and print its CPU and wall times as ``%time`` does; keep its value."""
    user_before, system_before = _cpu_times()
    wall_before = time.perf_counter()
    value = run()
    wall = time.perf_counter() - wall_before
    user_after, system_after = _cpu_times()
    user, system = user_after - user_before, system_after - system_before
    print(
        f"CPU times: user {format_time(user)}, sys: {format_time(system)}, "
        f"total: {format_time(user + system)}"
    )
    print(f"Wall time: {format_time(wall)}")
    return value


@dataclass(frozen=True)
class TimeitResult:
    """What ``%timeit -o`` returns, as IPython's object of that name."""

    loops: int
    repeat: int
    all_runs: list[float]

    @property
    def timings(self) -> list[float]:
        return [run / self.loops for run in self.all_runs]

    @property
    def best(self) -> float:
        return min(self.timings)

    @property
    def worst(self) -> float:
        return max(self.timings)

    @property
    def average(self) -> float:
        return math.fsum(self.timings) / len(self.timings)

    @property
    def stdev(self) -> float:
        mean = self.average
        return math.sqrt(math.fsum((x - mean) ** 2 for x in self.timings) / len(self.timings))

    def __str__(self) -> str:
        return (
            f"{format_time(self.average)} \N{PLUS-MINUS SIGN} {format_time(self.stdev)} per loop "
            f"(mean \N{PLUS-MINUS SIGN} std. dev. of {self.repeat} run"
            f"{'' if self.repeat == 1 else 's'}, {self.loops:,} loop"
            f"{'' if self.loops == 1 else 's'} each)"
        )

    def __repr__(self) -> str:
        return f"<TimeitResult : {self}>"


@dataclass(frozen=True)
class TimeitOptions:
    number: int | None = None  # -n: loops per run (auto-ranged when absent)
    repeat: int = _DEFAULT_REPEAT  # -r: runs
    quiet: bool = False  # -q: print nothing
    return_result: bool = False  # -o: return the TimeitResult


def parse_timeit_options(args: str) -> tuple[TimeitOptions, str]:
    """IPython's options at the start of ``args`` (-n N, -r R, -q, -o), and the rest."""
    words = args.split(" ")
    options: dict[str, Any] = {}
    while words and words[0].startswith("-") and len(words[0]) > 1:
        flag = words.pop(0)
        letter, glued = flag[1], flag[2:]
        if letter in "nr":
            value = glued or (words.pop(0) if words else "")
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"-{letter} needs a positive whole number, got {value!r}")
            options["number" if letter == "n" else "repeat"] = int(value)
        elif flag == "-q":
            options["quiet"] = True
        elif flag == "-o":
            options["return_result"] = True
        else:
            raise ValueError(f"option {flag} is not supported here (use -n, -r, -q or -o)")
        while words and words[0] == "":
            words.pop(0)
    return TimeitOptions(**options), " ".join(words).strip()


def _loop_counts() -> Iterator[int]:
    base = 1
    while True:
        for factor in (1, 2, 5):
            yield base * factor
        base *= 10


def _autorange(timer: stdlib_timeit.Timer, deadline: float) -> tuple[int, float]:
    """Loops per run and the first run's time: loops grow 1, 2, 5, 10, ... as in the
    standard library's autorange, so a run ends between 0.2 and 0.5 s and the budget
    holds several runs."""
    for number in _loop_counts():
        taken = timer.timeit(number)
        if taken >= _RUN_TARGET_S or time.perf_counter() + 2.5 * taken > deadline:
            return number, taken
    raise AssertionError("unreachable: the loop counts never end")


def measure(timer: stdlib_timeit.Timer, options: TimeitOptions) -> TimeitResult:
    """Runs of ``timer``, auto-ranged as IPython does, all within ``TIMEIT_BUDGET_S``
    (at least one run, however long)."""
    deadline = time.perf_counter() + TIMEIT_BUDGET_S
    runs: list[float] = []
    if options.number is None:
        number, taken = _autorange(timer, deadline)
        runs.append(taken)  # a whole run with the final number of loops: keep it
    else:
        number = options.number
    while len(runs) < options.repeat:
        average = math.fsum(runs) / len(runs) if runs else 0.0
        if runs and time.perf_counter() + average > deadline:
            break
        runs.append(timer.timeit(number))
    return TimeitResult(loops=number, repeat=len(runs), all_runs=runs)


def timeit(args: str, namespace: dict[str, Any], body: str | None = None) -> TimeitResult | None:
    """``%timeit ARGS``; as ``%%timeit ARGS`` the body is timed and ARGS' statement is
    its setup, run once before each run and not timed."""
    options, statement = parse_timeit_options(args)
    setup = "pass"
    if body is not None:
        setup, statement = statement or "pass", body
    timer = stdlib_timeit.Timer(statement, setup, timer=time.perf_counter, globals=namespace)
    result = measure(timer, options)
    if not options.quiet:
        if result.best > 0 and result.worst > 4 * result.best and result.worst > 1e-6:
            print(
                f"The slowest run took {result.worst / result.best:0.2f} times longer than the "
                "fastest. This could mean that an intermediate result is being cached."
            )
        print(result)
    return result if options.return_result else None
