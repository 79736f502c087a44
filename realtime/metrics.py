"""Prometheus metrics (``--metrics``): what the server counts, and its exposition.

The hot path only adds to plain integers on the site (``SiteStats``) and the layer
(``LayerStats``); prometheus-client reads them at scrape time through a custom collector, so
counting costs nothing measurable. Under ``--workers`` every worker writes a snapshot of its
counters to a shared directory (``REALTIME_METRICS_DIR``) every half second and at exit;
whichever worker answers a scrape adds up every snapshot (its own counted live), so totals
are correct across processes (at most half a second behind for the others).

HTTP requests (WebSocket upgrades are ``realtime_handshakes``' alone) are counted where each
one ends, in ``RealtimeSite.http_done``, with the status the access log writes: the
response's, or ``NO_RESPONSE`` (499, nginx's "client closed request") when the connection
or stream ended before its head was sent. A stream (SSE, a long poll) is in progress, and
timed, until its response ends; a client that leaves mid-stream counts as the status sent.
"""

from __future__ import annotations

import json
import os
import tempfile
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

#: Handshake latency buckets, seconds (from TCP accept to the 101 or the refusal).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: HTTP request duration buckets, seconds (from the request's first byte to its response's
#: end): longer ones for long polls and streams.
HTTP_BUCKETS = (*BUCKETS, 10.0, 30.0, 60.0)
#: Methods counted under their own name; any other is "other" (a bounded label).
METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT",
                                   b"OPTIONS", b"TRACE", b"PATCH")}
#: The status counted (and logged) for an HTTP request whose connection or stream ended
#: before its response's head went out: nginx's 499.
NO_RESPONSE = 499


class SiteStats:
    """Plain counters, bumped on the reactor thread."""

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.handshakes: Counter[int] = Counter()
        self.close_codes: Counter[int] = Counter()
        self.latency_buckets = [0] * len(BUCKETS)
        self.latency_count = 0
        self.latency_sum = 0.0
        #: HTTP requests by (method label, status), and those begun but not yet ended.
        self.http_requests: Counter[tuple[str, int]] = Counter()
        self.http_in_progress = 0
        #: Per bucket (not cumulative: one add per request), the last past every bound.
        self.http_buckets = [0] * (len(HTTP_BUCKETS) + 1)
        self.http_sum = 0.0
        #: realtime.pubsub commands by (method, result): "ok" or the error code.
        self.pubsub_commands: Counter[tuple[str, str]] = Counter()

    def observe_http(self, method: bytes, status: int, seconds: float) -> None:
        self.http_requests[METHODS.get(method, "other"), status] += 1
        self.http_buckets[bisect_left(HTTP_BUCKETS, seconds)] += 1
        self.http_sum += seconds

    def observe_handshake(self, status: int, seconds: float) -> None:
        self.handshakes[status] += 1
        self.latency_count += 1
        self.latency_sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1


def snapshot(sites: Iterable[Any], layer: Any) -> dict[str, Any]:
    """This process's totals as a JSON-able dict."""
    snap: dict[str, Any] = {
        "connections": 0, "messages_in": 0, "messages_out": 0, "bytes_in": 0,
        "bytes_out": 0, "slow_consumer_closes": 0, "dropped_messages": 0,
        "compressed_messages": 0, "compression_saved_bytes": 0,
        "handshakes": Counter(), "close_codes": Counter(),
        "latency_buckets": [0] * len(BUCKETS), "latency_count": 0, "latency_sum": 0.0,
        "http_requests": Counter(), "http_in_progress": 0,
        "http_buckets": [0] * (len(HTTP_BUCKETS) + 1), "http_sum": 0.0,
        "pubsub_commands": Counter(),
    }
    for site in sites:
        stats: SiteStats = site.stats
        snap["connections"] += sum(1 for c in site.connections if not c.in_handshake)
        for name in ("messages_in", "messages_out", "bytes_in", "bytes_out"):
            snap[name] += getattr(stats, name)
        snap["slow_consumer_closes"] += site.slow_consumer_closes
        snap["dropped_messages"] += site.dropped_messages
        deflater = getattr(site, "deflater", None)
        if deflater is not None:
            snap["compressed_messages"] += deflater.messages
            snap["compression_saved_bytes"] += deflater.saved
        snap["handshakes"].update(stats.handshakes)
        snap["close_codes"].update(stats.close_codes)
        snap["latency_buckets"] = [a + b for a, b in
                                   zip(snap["latency_buckets"], stats.latency_buckets, strict=True)]
        snap["latency_count"] += stats.latency_count
        snap["latency_sum"] += stats.latency_sum
        snap["http_requests"].update(stats.http_requests)
        snap["http_in_progress"] += stats.http_in_progress
        snap["http_buckets"] = [a + b for a, b in
                                zip(snap["http_buckets"], stats.http_buckets, strict=True)]
        snap["http_sum"] += stats.http_sum
        snap["pubsub_commands"].update(stats.pubsub_commands)
    layer_stats = getattr(layer, "stats", None)
    for name in ("delivered", "dropped", "published", "broadcast_frames", "broadcast_writes",
                 "gaps", "unavailable", "history_recovered", "history_unrecovered",
                 "presence_expired"):
        snap["layer_" + name] = getattr(layer_stats, name, 0)
    # broadcast() frames are counted by the layer (once per broadcast, off the hot loop).
    snap["messages_out"] += snap["layer_broadcast_frames"]
    snap["bytes_out"] += getattr(layer_stats, "broadcast_bytes", 0)
    snap["layer_reconnects"] = getattr(layer, "reconnects", 0)
    from realtime.pubsub_proxy import GATES, config  # (this process's, whatever its sites)

    # by "proxy event" (a named proxy's event: "", it serves every event that picks it)
    gauges = GATES.gauges(config())
    snap["pubsub_proxy_inflight"] = {f"{p} {e}": n for (p, e), (n, _) in gauges.items()}
    snap["pubsub_proxy_queued"] = {f"{p} {e}": n for (p, e), (_, n) in gauges.items()}
    snap["pubsub_proxy_calls"] = {f"{e} {p} {o}": n for (e, p, o), n in GATES.calls.items()}
    snap["handshakes"] = {str(k): v for k, v in snap["handshakes"].items()}
    snap["close_codes"] = {str(k): v for k, v in snap["close_codes"].items()}
    snap["http_requests"] = {f"{m} {s}": v for (m, s), v in snap["http_requests"].items()}
    snap["pubsub_commands"] = {f"{m} {r}": v for (m, r), v in snap["pubsub_commands"].items()}
    return snap


def add_up(snaps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for snap in snaps:
        for key, value in snap.items():
            if isinstance(value, dict):
                bucket = total.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
            elif isinstance(value, list):
                current = total.get(key)
                total[key] = value[:] if current is None else [
                    a + b for a, b in zip(current, value, strict=True)]
            else:
                total[key] = total.get(key, 0) + value
    return total


class SnapshotWriter:
    """Under ``--workers``: this worker's snapshot, written atomically to ``directory``."""

    def __init__(self, directory: str, sites: list[Any], layer: Any) -> None:
        self.directory = directory
        self.sites = sites
        self.layer = layer
        self.path = os.path.join(directory, f"worker-{os.getpid()}.json")

    def write(self) -> None:
        data = json.dumps(snapshot(self.sites, self.layer))
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".snap-")
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def others(self) -> list[dict[str, Any]]:
        found = []
        for name in os.listdir(self.directory):
            full = os.path.join(self.directory, name)
            if not name.startswith("worker-") or full == self.path:
                continue
            try:
                with open(full) as f:
                    snap = json.load(f)
            except (OSError, ValueError):
                continue
            pid = int(name[len("worker-"):-len(".json")])
            if not _alive(pid):
                # gauges: a dead worker holds no sockets, answers no request, asks no
                # proxy (its series kept at 0)
                snap["connections"] = snap["http_in_progress"] = 0
                for gauge in ("pubsub_proxy_inflight", "pubsub_proxy_queued"):
                    snap[gauge] = dict.fromkeys(snap.get(gauge) or {}, 0)
            found.append(snap)
        return found


def snapshot_timer(writer: SnapshotWriter, reactor: Any) -> Any:
    """A service writing ``writer``'s snapshot every half second, and once more when it
    stops (after the drain): a worker that exits (each ``--reload`` restart) leaves its
    last counts, not those of up to half a second before."""
    from twisted.application.internet import TimerService

    class SnapshotTimer(TimerService):
        def stopService(self) -> Any:
            def last(result: Any) -> Any:
                writer.write()
                return result

            return super().stopService().addCallback(last)

    timer = SnapshotTimer(0.5, writer.write)
    timer.clock = reactor
    return timer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Collector:
    """A prometheus-client collector over the live counters (and other workers')."""

    def __init__(self, sites: list[Any], layer: Any, writer: SnapshotWriter | None = None) -> None:
        self.sites = sites
        self.layer = layer
        self.writer = writer

    def totals(self) -> dict[str, Any]:
        own = snapshot(self.sites, self.layer)
        if self.writer is None:
            return own
        return add_up([own, *self.writer.others()])

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        t = self.totals()
        yield GaugeMetricFamily("realtime_connections", "Open WebSocket connections",
                                value=t["connections"])
        handshakes = CounterMetricFamily("realtime_handshakes", "WebSocket handshakes by HTTP "
                                         "status (101: accepted)", labels=["status"])
        for status, count in sorted(t["handshakes"].items()):
            handshakes.add_metric([status], count)
        yield handshakes
        for name, help_text in (
            ("messages_in", "WebSocket messages received"),
            ("messages_out", "WebSocket messages sent (broadcast frames included)"),
            ("bytes_in", "WebSocket payload bytes received"),
            ("bytes_out", "WebSocket bytes sent"),
            ("slow_consumer_closes", "Sockets closed 4008 by the slow-consumer policy"),
            ("dropped_messages", "Messages skipped by the slow-consumer drop policy"),
            ("compressed_messages", "Messages sent compressed (--compression), per client"),
            ("compression_saved_bytes", "Bytes --compression kept off the wire"),
            ("layer_published", "Channel-layer publishes"),
            ("layer_delivered", "Channel-layer events delivered to local consumers"),
            ("layer_broadcast_frames", "broadcast() frames written to local members"),
            ("layer_broadcast_writes", "Writes that carried broadcast() frames to a local member "
             "(a burst held during one read counts once: frames / writes is the coalescing)"),
            ("layer_dropped", "Channel-layer messages dropped at capacity"),
            ("layer_reconnects", "Channel-layer reconnects"),
            ("layer_gaps", "Groups told they may have missed messages (layer.gap)"),
            ("layer_unavailable", "Layer calls refused while its backend was unreachable"),
            ("layer_history_recovered", "Messages replayed from group history (--history) to "
             "members that missed them (a join with since=, a Redis reconnect)"),
            ("layer_history_unrecovered", "Recoveries history no longer covered (the app "
             "was told: recovered False, or layer.gap)"),
            ("layer_presence_expired", "presence.leave events made here for the members of "
             "another process that died without them leaving (Redis layer)"),
        ):
            yield CounterMetricFamily(f"realtime_{name}", help_text, value=t.get(name, 0))
        closes = CounterMetricFamily("realtime_close_codes", "WebSocket closes by code",
                                     labels=["code"])
        for code, count in sorted(t["close_codes"].items()):
            closes.add_metric([code], count)
        yield closes
        cumulative = []
        for bound, count in zip(BUCKETS, t["latency_buckets"], strict=True):
            cumulative.append((str(bound), count))
        cumulative.append(("+Inf", t["latency_count"]))
        yield HistogramMetricFamily(
            "realtime_handshake_seconds", "From TCP accept to the handshake's answer",
            buckets=cumulative, sum_value=t["latency_sum"],
        )
        requests = CounterMetricFamily(
            "realtime_http_requests", "HTTP requests by method (others: other) and response "
            "status (499: none, the connection or stream ended first); WebSocket upgrades are not",
            labels=["method", "status"])
        for key, count in sorted(t["http_requests"].items()):
            method, _, status = key.partition(" ")
            requests.add_metric([method, status], count)
        yield requests
        commands = CounterMetricFamily(
            "realtime_pubsub_commands", "Centrifugo-protocol commands (realtime.pubsub) by "
            "method and result (ok, or the error code answered)", labels=["method", "result"])
        for key, count in sorted(t.get("pubsub_commands", {}).items()):
            method, _, result = key.partition(" ")
            commands.add_metric([method, result], count)
        yield commands
        for name, key, text in (
                ("realtime_pubsub_proxy_requests_in_progress", "pubsub_proxy_inflight",
                 "Centrifugo-proxy requests (realtime.pubsub_proxy) in flight to the backend "
                 "by proxy (default: an event's own, event saying which; else a --proxy "
                 "name), --proxy-max-inflight (or the proxy's max_inflight) at most"),
                ("realtime_pubsub_proxy_calls_queued", "pubsub_proxy_queued",
                 "Centrifugo-proxy calls waiting for a place by proxy (--proxy-max-inflight, "
                 "or the proxy's max_inflight)")):
            gauge = GaugeMetricFamily(name, text, labels=["proxy", "event"])
            for gate, count in sorted(t.get(key, {}).items()):
                proxy, _, event = gate.partition(" ")
                gauge.add_metric([proxy, event], count)
            yield gauge
        calls = CounterMetricFamily(
            "realtime_pubsub_proxy_calls", "Centrifugo-proxy calls by event, proxy (default: "
            "the event's own; else a --proxy name) and outcome (answered, failed, timeout, "
            "queue_timeout, dropped: the client left while it waited)",
            labels=["event", "proxy", "outcome"])
        for key, count in sorted(t.get("pubsub_proxy_calls", {}).items()):
            event, proxy, outcome = key.split(" ", 2)
            calls.add_metric([event, proxy, outcome], count)
        yield calls
        yield GaugeMetricFamily("realtime_http_requests_in_progress",
                                "HTTP requests begun and not ended (an open SSE stream, a "
                                "long poll; a scrape counts itself)",
                                value=t["http_in_progress"])
        running = 0
        http_cumulative = []
        for le, count in zip((*HTTP_BUCKETS, "+Inf"), t["http_buckets"], strict=True):
            running += count
            http_cumulative.append((str(le), running))
        yield HistogramMetricFamily(
            "realtime_http_request_seconds", "From an HTTP request's first byte to its "
            "response's end (a stream's whole length)",
            buckets=http_cumulative, sum_value=t["http_sum"],
        )


def exposition(collector: Collector) -> tuple[bytes, bytes]:
    """(content type, body) of a scrape."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return CONTENT_TYPE_LATEST.encode(), generate_latest(registry)
