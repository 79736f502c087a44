"""The in-memory channel layer (the default): one process, no expiry scans.

Daphne's in-memory layer walks every channel to expire messages on each ``receive`` and
``group_send`` (O(connections) per call) and delivered nothing to a 5,000-member room.
Here a group send is one loop over that group's members, and a member that goes away is
removed from its groups when its consumer ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from realtime.layers.base import (
    BaseChannelLayer,
    ChannelFull,
    check_name,
    check_presence,
    flush_held,
    invalid,
    prepared_frame,
)


class InMemoryChannelLayer(BaseChannelLayer):
    """Groups and channels within one process."""

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
                  announce: bool = True) -> Deferred[None]:
        if (bad := invalid(group=group, channel=channel)) is not None:
            return bad
        try:
            presence = check_presence(presence)
        except TypeError as exc:
            return fail(exc)
        self._add_local(group, channel)
        if presence is not None:
            return self._track(group, channel, presence, announce)
        return succeed(None)

    def group_presence(self, group: str) -> Deferred[dict[str, dict[str, Any]]]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return succeed(self.local_presence(group))

    def group_discard(self, group: str, channel: str) -> Deferred[None]:
        if (bad := invalid(group=group, channel=channel)) is not None:
            return bad
        self._discard_local(group, channel)
        return succeed(None)

    def group_send(self, group: str, message: dict[str, Any]) -> Deferred[None]:
        if (bad := invalid(group=group, message=message)) is not None:
            return bad
        self._fan_out(group, message)
        return succeed(None)

    def broadcast(
        self, group: str, text: str | None = None, bytes: bytes | None = None
    ) -> Deferred[None]:
        try:
            check_name(group, "group")
            frame = prepared_frame(text, bytes)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        self._broadcast_local(group, frame)
        return succeed(None)

    def flush(self) -> Deferred[None]:
        flush_held()  # what was broadcast before the flush is still delivered
        self._groups.clear()
        self._memberships.clear()
        self._presence.clear()
        self._in_several = 0
        self._queues.clear()
        for waiters in self._waiters.values():
            for d in waiters:
                d.cancel()
        self._waiters.clear()
        return succeed(None)
