"""``-v/--verbosity 0..3`` (Daphne's option): which log events reach twistd's log.

0: warnings and errors only; 1: info (the default); 2: debug; 3: debug, and asyncio's debug
mode under ``--reactor=asyncio`` (its slow-callback warnings). The access log is not
affected: it is ``--access-log``.

twistd chooses its observers (stdout, ``--logfile``, ``--syslog``) only after
``makeService`` has run, and hands them to ``globalLogBeginner.beginLoggingTo``, which then
replays what was logged before. ``filter_log`` wraps those observers in a
``FilteringLogObserver`` at that moment, so the level applies to every event of the process,
the replayed ones and twistd's own start-up lines included. Kept at any level:

- what the program writes to stdout (a ``print``): output, not a log level;
- a ``--workers`` child's lines as the supervisor relays them: the child runs with the same
  options and has filtered them already.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
)
from zope.interface import implementer

LEVELS = {0: LogLevel.warn, 1: LogLevel.info, 2: LogLevel.debug, 3: LogLevel.debug}
#: The namespace of the supervisor's relay of its workers' lines (``realtime.workers``).
RELAY_NAMESPACE = "realtime.workers.relay"


@implementer(ILogFilterPredicate)
class Verbosity:
    """Keep events at or above the verbosity's level; events without a level or namespace
    (which ``LogLevelFilterPredicate`` would drop) are kept."""

    def __init__(self, verbosity: int) -> None:
        if verbosity not in LEVELS:
            raise ValueError("verbosity must be 0, 1, 2 or 3")
        self.levels = LogLevelFilterPredicate(defaultLogLevel=LEVELS[verbosity])
        for namespace in ("stdout", RELAY_NAMESPACE):
            self.levels.setLogLevelForNamespace(namespace, LogLevel.debug)

    def __call__(self, event: dict[str, Any]) -> Any:
        if event.get("log_level") is None or not event.get("log_namespace"):
            return PredicateResult.maybe
        return self.levels(event)


def filter_log(verbosity: int, beginner: Any = None) -> None:
    """Make ``beginner`` (twistd's ``globalLogBeginner``) wrap the observers it begins
    logging to in a filter for ``verbosity``. Call it before logging begins: in
    ``makeService``, which twistd runs first."""
    if beginner is None:
        from twisted.logger import globalLogBeginner as beginner
    keep: Any = Verbosity(verbosity)
    begin = beginner.beginLoggingTo

    def begin_filtered(observers: Any, discardBuffer: bool = False,
                       redirectStandardIO: bool = True) -> None:
        filtered: list[Any] = [FilteringLogObserver(o, [keep]) for o in observers]
        begin(filtered, discardBuffer=discardBuffer, redirectStandardIO=redirectStandardIO)

    beginner.beginLoggingTo = begin_filtered


def apply_verbosity(verbosity: int, reactor: Any, under_twistd: bool) -> None:
    """What ``-v`` does at ``makeService`` (the server's and ``realtime-runworker``'s): the
    log filter under twistd (whose logging begins after), and asyncio's debug mode at 3."""
    if under_twistd:
        filter_log(verbosity)
    if verbosity >= 3 and not asyncio_debug(reactor):
        from twisted.logger import Logger

        Logger(namespace="realtime").info("-v 3: asyncio's debug mode needs "
                                          "--reactor=asyncio")


def asyncio_debug(reactor: Any) -> bool:
    """-v 3: asyncio's debug mode on the reactor's loop; False when the reactor is not
    asyncio's."""
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:
        return False
    loop.set_debug(True)
    return True
