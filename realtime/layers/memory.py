"""The in-memory channel layer (the default): one process, no expiry scans.

Daphne's in-memory layer walks every channel to expire messages on each ``receive`` and
``group_send`` (O(connections) per call) and delivered nothing to a 5,000-member room.
Here a group send is one loop over that group's members, and a member that goes away is
removed from its groups when its consumer ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from realtime.layers.base import (
    BaseChannelLayer,
    ChannelFull,
    check_exclude,
    check_name,
    flush_held,
    invalid,
    prepared_frame,
)
from realtime.layers.history import Stream, answer

#: History is swept (streams whose epoch outlived ``history_meta_ttl`` dropped, messages
#: past their ttl freed) every this many history calls, or on the first one this many
#: seconds after the last sweep.
SWEEP_EVERY = 1024
SWEEP_INTERVAL = 10.0


class InMemoryChannelLayer(BaseChannelLayer):
    """Groups and channels within one process."""

    def __init__(self, capacity: int = 100,
                 history: dict[str, tuple[int, float]] | None = None,
                 reactor: Any = None) -> None:
        super().__init__(capacity=capacity, history=history)
        #: History clock: ``reactor.seconds()`` (a test's ``Clock``), else the monotonic one.
        self._now = reactor.seconds if reactor is not None else time.monotonic
        self._streams: dict[str, Stream] = {}
        self._calls = 0
        self._swept = self._now()

    def _queue_clock(self) -> float:
        return self._now()

    def _stream(self, group: str, now: float) -> Stream:
        """``group``'s stream; a new epoch when its old one outlived the meta ttl."""
        self._calls += 1
        if self._calls >= SWEEP_EVERY or now - self._swept >= SWEEP_INTERVAL:
            self._sweep(now)
        stream = self._streams.get(group)
        if stream is None or now - stream.last >= self.history_meta_ttl:
            stream = self._streams[group] = Stream(now)
        return stream

    def _sweep(self, now: float) -> None:
        """What a stream no longer needs goes: memory does not wait for the group's next
        publish (a room that went quiet keeps nothing past its ttl)."""
        self._calls, self._swept = 0, now
        ttl = self.history_meta_ttl
        for group, stream in list(self._streams.items()):
            if now - stream.last >= ttl:
                del self._streams[group]
            elif stream.entries:
                rule = self.history.match(group)
                if rule is None:
                    stream.entries.clear()
                else:
                    stream.expire(rule, now)

    def send(self, channel: str, message: dict[str, Any]) -> Deferred[None]:
        if (bad := invalid(channel=channel, message=message)) is not None:
            return bad
        if not self._deliver_local(channel, message):
            return fail(ChannelFull(channel))
        return succeed(None)

    def receive(self, channel: str) -> Deferred[dict[str, Any]]:
        if (bad := invalid(channel=channel)) is not None:
            return bad
        return self._receive_local(channel)

    def group_add(self, group: str, channel: str, presence: dict[str, Any] | None = None,
                  announce: bool = True,
                  since: dict[str, Any] | None = None) -> Deferred[Any]:
        try:
            presence, position, rule = self._join_args(group, channel, presence, since)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        self._add_local(group, channel)
        result = None
        if rule is not None:
            # Synchronous: nothing can be published between the join and the read.
            now = self._now()
            stream = self._stream(group, now)
            recovered: bool | None = None
            missed: list[dict[str, Any]] = []
            if position is not None:
                recovered, missed = stream.read(position, None, rule, now)
            result = {"epoch": stream.epoch, "offset": stream.top, "recovered": recovered,
                      "missed": len(missed)}
            for message in missed:  # nothing can come between: no floors needed
                self.stats.history_recovered += self._recover_one(group, channel, message)
            if recovered is False:
                self.stats.history_unrecovered += 1
        if presence is not None:
            return self._track(group, channel, presence, announce).addCallback(
                lambda _: result)
        return succeed(result)

    def group_history_remove(self, group: str) -> Deferred[None]:
        try:
            self._history_args(group, None, None)  # a group some rule matches
        except (TypeError, ValueError) as exc:
            return fail(exc)
        stream = self._streams.get(group)
        if stream is not None:
            stream.entries.clear()
        return succeed(None)

    def group_history(self, group: str, since: dict[str, Any] | None = None,
                      limit: int | None = None) -> Deferred[dict[str, Any]]:
        try:
            rule, position, most = self._history_args(group, since, limit)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        now = self._now()
        stream = self._stream(group, now)
        recovered, messages = stream.read(position, most, rule, now)
        return succeed(answer(stream.epoch, stream.top, recovered,
                              [dict(m) for m in messages]))

    def group_presence(self, group: str) -> Deferred[dict[str, dict[str, Any]]]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return succeed(self.local_presence(group))

    def group_discard(self, group: str, channel: str) -> Deferred[None]:
        if (bad := invalid(group=group, channel=channel)) is not None:
            return bad
        self._discard_local(group, channel)
        return succeed(None)

    def _group_send(self, group: str, message: dict[str, Any], record: bool,
                    exclude: tuple[str, ...] | None = None) -> Deferred[Any]:
        if (bad := invalid(group=group, message=message)) is not None:
            return bad
        rule = self.history.match(group) if record and self.history else None
        if rule is None:
            self._fan_out(group, message, exclude=exclude)
            return succeed(None)
        now = self._now()
        stored = self._stream(group, now).append(message, rule, now)
        self._fan_out(group, stored)
        return succeed(dict(stored["position"]))

    def broadcast(
        self, group: str, text: str | None = None, bytes: bytes | None = None,
        exclude: str | Iterable[str] | None = None,
    ) -> Deferred[None]:
        try:
            check_name(group, "group")
            skip = check_exclude(exclude)
            frame = prepared_frame(text, bytes)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        self._broadcast_local(group, frame, skip)
        return succeed(None)

    def group_close(self, group: str, code: int = 1000,
                    reason: str | None = None) -> Deferred[None]:
        if (bad := self._close_args(group, code, reason)) is not None:
            return bad
        self._close_local(group, code, reason)
        return succeed(None)

    def flush(self) -> Deferred[None]:
        flush_held()  # what was broadcast before the flush is still delivered
        self._groups.clear()
        self._memberships.clear()
        self._presence.clear()
        self._streams.clear()
        self._in_several = 0
        self._queues.clear()
        self._queued_at.clear()
        for waiters in self._waiters.values():
            for d in waiters:
                d.cancel()
        self._waiters.clear()
        return succeed(None)
