"""Group history: the last messages of chosen groups, so a client that comes back gets what
it missed (Centrifugo's recovery; Channels, Daphne and python-socketio have none).

A group whose name matches a rule (``--history 'room.*=100:300'``, or
``layer.keep_history("room.*", size=100, ttl=300)``) keeps its last ``size``
``group_send`` messages, all of them forgotten ``ttl`` seconds after the last publish (as
Centrifugo's ``history_ttl``). Each message of such a group is delivered with
``"position": {"epoch": E, "offset": N}``: offsets count 1, 2, 3... within an epoch. The
epoch changes when the stream itself is forgotten (``history_meta_ttl`` after its last
publish, a ``flush()``, a Redis that lost its data), and then nothing before can be
recovered. ``group_add(group, channel, since=position)`` replays what the channel missed
after ``since`` (before any newer message, none twice) or, when history no longer covers
it, nothing: recovery is all or nothing, never partial, so the app knows to reload.
``broadcast()`` frames are not recorded (they are opaque bytes for the sockets).
"""

from __future__ import annotations

import fnmatch
import re
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

#: The key a history group's messages carry their position in.
POSITION = "position"
#: How long a stream's epoch and offset outlive its last publish (seconds): a client that
#: comes back within it with nothing missed is told "recovered", later it is not.
META_TTL = 86400.0
#: The most messages one group may keep.
MAX_SIZE = 100_000

_PATTERN = re.compile(r"^[a-zA-Z0-9\-_.*?\[\]!]+$")


@dataclass(frozen=True)
class HistoryRule:
    """Groups matching ``pattern`` (an ``fnmatch`` glob) keep ``size`` messages for ``ttl``
    seconds after the last one."""

    pattern: str
    size: int
    ttl: float


def check_rule(pattern: Any, size: Any, ttl: Any) -> HistoryRule:
    if not isinstance(pattern, str) or not _PATTERN.match(pattern) or len(pattern) > 99:
        raise ValueError(f"history pattern must be a group-name glob (letters, digits, -_. "
                         f"and * ? [ ]), not {pattern!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"history size must be a whole number from 1 to {MAX_SIZE}, "
                         f"not {size!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < 1e9:
        raise ValueError(f"history ttl must be a number of seconds above 0, not {ttl!r}")
    return HistoryRule(pattern, size, float(ttl))


def parse_rule(text: str) -> HistoryRule:
    """``PATTERN=SIZE:TTL`` (``room.*=100:300``) as given to ``--history``."""
    pattern, equals, rest = text.partition("=")
    size, colon, ttl = rest.partition(":")
    if not equals or not colon:
        raise ValueError(f"expected PATTERN=SIZE:TTL (e.g. 'room.*=100:300'), got {text!r}")
    try:
        size_value = int(size)
        ttl_value = float(ttl)
    except ValueError:
        raise ValueError(f"expected PATTERN=SIZE:TTL with whole SIZE and TTL in seconds, "
                         f"got {text!r}") from None
    return check_rule(pattern, size_value, ttl_value)


def apply_rules(layer: Any, texts: list[str]) -> None:
    """``--history`` values (``PATTERN=SIZE:TTL`` each, in order) onto ``layer``;
    ``ValueError`` names the bad one."""
    for text in texts:
        rule = parse_rule(text)
        layer.keep_history(rule.pattern, rule.size, rule.ttl)


class HistoryRules:
    """The rules of one layer, first match wins; lookups are cached per group name."""

    def __init__(self) -> None:
        self.rules: list[HistoryRule] = []
        self._cache: dict[str, HistoryRule | None] = {}

    def add(self, rule: HistoryRule) -> None:
        self.rules.append(rule)
        self._cache.clear()

    def match(self, group: str) -> HistoryRule | None:
        try:
            return self._cache[group]
        except KeyError:
            pass
        found = next((r for r in self.rules if fnmatch.fnmatchcase(group, r.pattern)), None)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[group] = found
        return found

    def __bool__(self) -> bool:
        return bool(self.rules)


def check_since(since: Any) -> tuple[str, int] | None:
    """``since=`` (a position as delivered: ``{"epoch": str, "offset": int}``) or None."""
    if since is None:
        return None
    if not isinstance(since, dict):
        raise TypeError(f"since must be a position dict {{'epoch': str, 'offset': int}}, "
                        f"not {type(since).__name__}")
    epoch, offset = since.get("epoch"), since.get("offset")
    if not isinstance(epoch, str) or not epoch or len(epoch) > 64:
        raise TypeError(f"since['epoch'] must be a non-empty str, not {epoch!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**63:
        raise TypeError(f"since['offset'] must be a whole number >= 0, not {offset!r}")
    return epoch, offset


def check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SIZE:
        raise TypeError(f"limit must be a whole number from 1 to {MAX_SIZE}, not {limit!r}")
    return limit


def decide(since: tuple[str, int] | None, epoch: str, top: int, kept: int,
           limit: int | None) -> tuple[bool | None, int]:
    """(recovered, how many of the newest kept messages to return) for a read of a stream
    at ``epoch``/``top`` that keeps its last ``kept`` messages (offsets top-kept+1..top).

    Without ``since``: the newest ``limit`` (all kept), ``recovered`` None. With it: every
    message after it when they are all kept (and no more than ``limit``), else none and
    ``recovered`` False. The Redis layer's read script mirrors this."""
    if since is None:
        return None, kept if limit is None else min(kept, limit)
    missed = top - since[1]
    if since[0] != epoch or missed < 0 or missed > kept or (
            limit is not None and missed > limit):
        return False, 0
    return True, missed


def new_epoch() -> str:
    return secrets.token_hex(4)


def position(epoch: str, offset: int) -> dict[str, Any]:
    return {"epoch": epoch, "offset": offset}


def positioned(message: dict[str, Any], epoch: str, offset: int) -> dict[str, Any]:
    stored = dict(message)
    stored[POSITION] = position(epoch, offset)
    return stored


def answer(epoch: str, top: int, recovered: bool | None,
           messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``group_history`` returns."""
    return {"epoch": epoch, "offset": top, "recovered": recovered, "messages": messages}


class Stream:
    """One group's history in the in-memory layer."""

    __slots__ = ("entries", "epoch", "last", "top")

    def __init__(self, now: float) -> None:
        self.epoch = new_epoch()
        self.top = 0
        self.entries: deque[dict[str, Any]] = deque()
        self.last = now

    def append(self, message: dict[str, Any], rule: HistoryRule,
               now: float) -> dict[str, Any]:
        """The message as stored and delivered (with its position)."""
        self.expire(rule, now)
        self.top += 1
        stored = positioned(message, self.epoch, self.top)
        entries = self.entries
        entries.append(stored)
        while len(entries) > rule.size:
            entries.popleft()
        self.last = now
        return stored

    def expire(self, rule: HistoryRule, now: float) -> None:
        if self.entries and now - self.last >= rule.ttl:
            self.entries.clear()

    def read(self, since: tuple[str, int] | None, limit: int | None,
             rule: HistoryRule, now: float) -> tuple[bool | None, list[dict[str, Any]]]:
        self.expire(rule, now)
        while len(self.entries) > rule.size:  # a rule changed to keep fewer
            self.entries.popleft()
        recovered, count = decide(since, self.epoch, self.top, len(self.entries), limit)
        if not count:
            return recovered, []
        return recovered, list(self.entries)[-count:]
