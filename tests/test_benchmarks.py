"""The benchmark suite (benchmarks/): its statistics and table maker, and a smoke run.

The smoke run drives ``benchmarks/run.py --quick`` (tiny sizes, one pass, no virtualenvs, no
pinning) against ours, the raw Autobahn peer and the bare send() loop (fan-out only), all
from this Python, and ours with ``--workers 2`` on a Redis layer: no timing is asserted,
only that messages were delivered and that the rows carry the expected fields. A second
smoke run drives ``benchmarks/django_http.py --quick`` (Django's views over HTTP) against ours,
Daphne and uvicorn from run.py's virtualenvs (built on its first run: marked slow).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests import early

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
#: Where the background runs write (removed when the session's interpreter exits).
_OUT = tempfile.TemporaryDirectory(prefix="realtime-bench-")
SMOKE_OUT = Path(_OUT.name, "smoke")
DJANGO_OUT = Path(_OUT.name, "django")
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    COMMON_FIELDS,
    KIND_FIELDS,
    QUICK_SCENARIOS,
    QUICK_WORKERS_SCENARIOS,
    aggregate,
    latency_summary,
    make_client_table,
    make_table,
    make_text,
    make_workers_table,
    median,
    percentile,
    rated,
    ratio,
)

# -- statistics ----------------------------------------------------------------------------------


def test_a_timed_fan_out_window_with_too_few_deliveries_is_not_rated():
    """One late message in a timed window would be rated 8 s of CPU per delivery (Daphne's
    8,000,000 µs): under 100 it counts 0 (0/s, no CPU per delivery); a counted run (the
    quick scenarios, 50 deliveries) is rated whatever its size."""
    assert rated(1, timed=True) == 0
    assert rated(99, timed=True) == 0
    assert rated(100, timed=True) == 100
    assert rated(26_000, timed=True) == 26_000  # a server behind, still delivering: rated
    assert rated(50, timed=False) == 50
    assert rated(0, timed=False) == 0


def test_percentile_interpolates_like_numpy_linear():
    data = list(range(1, 101))
    assert percentile(data, 0) == 1
    assert percentile(data, 100) == 100
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([7], 99) == 7


def test_percentile_sorts_unless_told_presorted():
    assert percentile([5, 1, 4, 2, 3], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 25, presorted=True) == 2


def test_percentile_edges():
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1, 2], 101)
    with pytest.raises(ValueError):
        percentile([1, 2], -1)


def test_median_odd_even_and_missing():
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5
    assert median([None, 5, None]) == 5
    assert median([None, float("nan")]) is None
    assert median([]) is None


def test_latency_summary_in_milliseconds():
    samples = [1_000_000 * i for i in range(1, 101)]  # 1..100 ms, in ns
    s = latency_summary(samples)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["max_ms"] == 100
    assert latency_summary([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None}


def test_ratio_orientation():
    # Throughput: ours / peer.
    assert ratio(200, 100, "higher") == 2
    # Latency, CPU, memory: peer / ours, so > 1 still means ours is better.
    assert ratio(10, 20, "lower") == 2
    assert ratio(20, 10, "lower") == 0.5
    assert ratio(None, 10, "higher") is None
    assert ratio(10, None, "lower") is None
    assert ratio(0, 0, "higher") is None
    assert ratio(5, 0, "higher") == math.inf  # the peer delivered nothing
    with pytest.raises(ValueError):
        ratio(1, 2, "sideways")


# -- payloads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [*range(0, 70), 127, 1000, 4095, 65536])
def test_make_text_exact_size_whole_characters(n):
    text = make_text(n)
    raw = text.encode("utf-8")
    assert len(raw) == n
    assert raw.decode("utf-8") == text  # never split mid-character


def test_make_text_has_multibyte_characters_unless_ascii_only():
    assert any(ord(c) > 127 for c in make_text(64))
    assert make_text(64, ascii_only=True).isascii()
    assert len(make_text(64, ascii_only=True)) == 64


# -- aggregation and tables -----------------------------------------------------------------------


def _echo_row(server, value, p99=1.0, ok=True, **extra):
    return {"server": server, "scenario": "echo-100x1", "kind": "echo", "ok": ok,
            "error": None if ok else "boom", "msgs_per_s": value, "p99_ms": p99,
            "server_cpu_us_per_msg": 10.0, "client_cpu_share": 0.25,
            "server_cpu_share": 0.9, **extra}


def test_aggregate_takes_medians_of_good_passes():
    rows = [_echo_row("ours", 100), _echo_row("ours", 300), _echo_row("ours", 200),
            _echo_row("ours", 9999, ok=False)]
    agg = aggregate(rows)[("ours", "echo-100x1")]
    assert agg["msgs_per_s"] == 200
    assert agg["passes"] == 4
    assert agg["ok_passes"] == 3
    assert agg["errors"] == ["boom"]


def test_table_has_medians_and_ratios_against_each_peer():
    rows = [_echo_row("ours", 200, p99=1.0), _echo_row("autobahn", 100, p99=2.0),
            _echo_row("daphne", 50, p99=4.0)]
    agg = aggregate(rows)
    scenarios = [sc for sc in benchlib.FULL_SCENARIOS if sc.name in ("echo-100x1", "idle-5000")]
    table = make_table(agg, scenarios, "ours", ["autobahn", "daphne"],
                       {"autobahn": "raw Autobahn"})
    lines = table.splitlines()
    assert lines[0].startswith("| scenario | metric | ours | raw Autobahn | daphne |")
    assert "ours vs raw Autobahn" in lines[0] and "ours vs daphne" in lines[0]
    msgs = next(line for line in lines if "| msg/s |" in line)
    assert "200" in msgs and "2.00x" in msgs and "4.00x" in msgs
    p99 = next(line for line in lines if "latency p99" in line)
    assert "2.00x" in p99 and "4.00x" in p99  # lower is better: peer / ours
    idle = [line for line in lines if "KB RSS" in line]
    assert idle and "n/a" in idle[0]  # not measured: n/a, never a made-up figure
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_table_marks_unsupported_ours_as_na():
    rows = [{"server": "ours", "scenario": "fanout-1000x50", "kind": "fanout", "ok": False,
             "error": "handshake refused: HTTP 404 x10"},
            {"server": "autobahn", "scenario": "fanout-1000x50", "kind": "fanout", "ok": True,
             "delivered_per_s": 50000.0, "lost_pct": 0.0, "p50_ms": 9.0, "p99_ms": 14.0,
             "max_ms": 20.0, "server_cpu_us_per_delivery": 13.0}]
    agg = aggregate(rows)
    scenarios = [sc for sc in benchlib.FULL_SCENARIOS if sc.name == "fanout-1000x50"]
    table = make_table(agg, scenarios, "ours", ["autobahn"])
    delivered = next(line for line in table.splitlines() if "delivered/s" in line)
    assert "| n/a | 50,000 | n/a |" in delivered
    assert "—" in next(line for line in table.splitlines() if "lost %" in line)
    client = make_client_table(agg, scenarios, ["ours", "autobahn"])
    assert "n/a" in client


def test_rooms_join_measures_one_write_per_member_against_one_per_room():
    """benchmarks/rooms_join.py, tiny: both modes deliver every frame (it asserts that),
    joined in one write per member per turn, per room in one per room."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "rooms_join.py"), "--members", "20", "--rooms", "3",
         "--turns", "2", "--passes", "1", "--gap", "0"],
        capture_output=True, text=True, timeout=120, check=True)
    lines = proc.stdout.splitlines()
    joined = next(line for line in lines if line.strip().startswith("joined"))
    per_room = next(line for line in lines if line.strip().startswith("per room "))
    assert "1.00 writes per member per turn" in joined
    assert "3.00 writes per member per turn" in per_room
    assert any("per room / joined:" in line for line in lines)


def test_group_send_step_measures_both_paths_and_checks_every_frame_arrived():
    """benchmarks/group_send_step.py, tiny: a group_send to a handler per member and a
    broadcast, both timed, and the reader got every frame of both (it checks the bytes)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "group_send_step.py"), "--members", "20", "--turns", "2",
         "--passes", "1", "--no-pin"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.strip().startswith("group_send:") and "µs per delivery" in line
               for line in lines)
    assert any(line.strip().startswith("broadcast:") for line in lines)
    assert "every member got every frame (80 frames)" in lines


def test_history_benchmark_prints_both_layers_and_their_ratios():
    """``benchmarks/history.py`` with tiny sizes: both layers ran (its own redis-server),
    every member had every message (it asserts that), and the ratios are printed."""
    from tests.redis_support import redis_server_binary

    redis_server_binary()  # skip without it, fail under CI=true
    proc = subprocess.run(
        [sys.executable, str(BENCH / "history.py"), "--passes", "1", "--members", "5",
         "--messages", "50", "--missed", "20"],
        capture_output=True, text=True, timeout=120, cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for line in ("memory   plain", "memory   history", "redis    plain", "redis    history"):
        assert line in out, out
    assert "memory: history's publish costs" in out and "redis: history's publish" in out
    assert "bytes of Redis memory per kept message" in out


def test_the_ported_channels_consumers_are_daphnes_with_other_imports():
    """``ours-channels`` measures Daphne's consumers ported by changing imports: their
    classes must stay line for line what Daphne runs."""
    import re

    def classes(path: Path) -> str:
        text = path.read_text()
        return text[re.search(r"^class ", text, re.M).start():].split("\napplication =")[0]

    daphne = classes(BENCH / "peers" / "daphne_app" / "consumers.py").strip()
    ours = classes(BENCH / "peers" / "channels_port_app.py").strip()
    assert ours == daphne


# -- Django over HTTP (benchmarks/django_http.py) ------------------------------------------------


def test_http_client_frames_content_length_and_chunked_responses():
    """The HTTP load client reads a response whole, however it is framed or split."""
    from httpclient import BadResponse, parse_response

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    whole = head + b"Content-Length: 5\r\n\r\nhello"
    assert parse_response(whole) == (len(whole), 200, 5, "content-length", False)
    assert parse_response(whole[:-1]) is None
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n"
    assert parse_response(chunked) == (len(chunked), 200, 5, "chunked", False)
    for cut in range(len(chunked)):
        assert parse_response(chunked[:cut]) is None
    closing = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert parse_response(closing) == (len(closing), 404, 0, "content-length", True)
    for bad in (b"HTTP/1.1 200 OK\r\n\r\n", b"SSH-2.0\r\n\r\n",
                head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with pytest.raises(BadResponse):
            parse_response(bad)


def django_run() -> early.Run:
    """``benchmarks/django_http.py --quick``, started by the session ahead of its test
    (tests/early.py): its virtualenvs (built on a first run) and paced runs take most of a
    minute, which no result of it depends on."""
    return early.Run([sys.executable, str(BENCH / "django_http.py"), "--quick", "--no-pin",
                      "--out", str(DJANGO_OUT)], timeout=900, cwd=ROOT, nice=10)


@pytest.mark.slow
def test_django_http_quick_run_every_server_answers_without_errors():
    """``benchmarks/django_http.py --quick`` (1 pass, 1 s, 5 connections), the virtualenvs
    of run.py (created on the first run, hence the longer limit): every server served both
    views with no error, and the table has ours' ratio columns. No timing is asserted."""
    proc = early.take("django", django_run).result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line)
            for line in (DJANGO_OUT / "django-http-latest.jsonl").read_text().splitlines()]
    assert {(r["server"], r["scenario"]) for r in rows} == {
        (s, sc) for s in ("ours", "daphne", "uvicorn") for sc in ("django-sync", "django-async")}
    for row in rows:
        _check_fields(row)
        assert row["ok"], row
        assert row["http_errors"] == 0, row
        assert row["requests_per_s"] > 0 and row["connected"] == 5
        assert row["body_bytes"] == 100  # the views' JSON, whole
    text = (DJANGO_OUT / "django-http-latest.md").read_text()
    assert text in proc.stdout
    assert ("| scenario | metric | ours (asyncio reactor) | Daphne+Channels | uvicorn httptools "
            "| ours (asyncio reactor) vs Daphne+Channels | ours (asyncio reactor) vs uvicorn "
            "httptools |") in text
    assert "| django-sync | requests/s |" in text and "No errors in any run." in text


def pubsub_fanout_run() -> early.Run:
    """``benchmarks/pubsub_fanout.py`` with tiny sizes, started by the session ahead of its
    test (tests/early.py): a second of servers and clients starting, no timing asserted."""
    return early.Run([sys.executable, "benchmarks/pubsub_fanout.py", "--members", "20",
                      "--turns", "2", "--passes", "1", "--no-pin"], timeout=120, cwd=ROOT)


def test_smoke_pubsub_fanout_delivers_every_push():
    """``benchmarks/pubsub_fanout.py`` with tiny sizes: it measures the five kinds (JSON
    and Protobuf subscribers) and finds every push at every subscriber (it exits 1
    otherwise)."""
    result = early.take("pubsub-fanout", pubsub_fanout_run).result()
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines[:5]] == [
        "broadcast()", "publish, no history", "publish, history",
        "publish, no history, Protobuf", "publish, history, Protobuf"]
    assert lines[-1].startswith("every subscriber got every push")


# -- smoke run ---------------------------------------------------------------------------------

UNDER_CI = os.environ.get("CI", "").lower() == "true"
# Outside CI a missing test extra skips; under CI=true it fails (the run cannot import it).
NO_PICOWS = importlib.util.find_spec("picows") is None and not UNDER_CI
needs_picows = pytest.mark.skipif(NO_PICOWS, reason="the load client needs picows (the test extra)")


def smoke_run() -> early.Run:
    """The smoke run's process, started by the session ahead of its tests (tests/early.py):
    it runs beside the rest of the suite (at a lower priority), whose results no more than
    its own depend on timing. ``smoke`` waits for it."""
    return early.Run([sys.executable, str(BENCH / "run.py"), "--quick", "--no-venvs",
                      "--no-pin", "--no-chart", "--servers", "ours,autobahn,sendloop",
                      "--passes", "1", "--out", str(SMOKE_OUT)], timeout=240, cwd=ROOT,
                     nice=10)


def early_run_of(item: pytest.Item) -> tuple[str, Any] | None:
    """The smoke, Django and pub/sub fan-out runs, started by the session ahead of the
    tests that take them up (tests/early.py, tests/conftest.py)."""
    if not NO_PICOWS and "smoke" in item.fixturenames:
        return "smoke", smoke_run
    if item.name == "test_django_http_quick_run_every_server_answers_without_errors":
        return "django", django_run
    if item.name == "test_smoke_pubsub_fanout_delivers_every_push":
        return "pubsub-fanout", pubsub_fanout_run
    return None


@pytest.fixture(scope="module")
def smoke():
    proc = early.take("smoke", smoke_run).result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line)
            for line in (SMOKE_OUT / "latest.jsonl").read_text().splitlines()]
    return SMOKE_OUT, proc, rows


def _row(rows, server, scenario):
    return next(r for r in rows if r["server"] == server and r["scenario"] == scenario)


def _check_every_message_delivered(row, sc):
    assert row["ok"], row
    p = sc.params
    assert row["connected"] == p["members"]
    assert row["sent"] == p["count"]
    assert row["expected"] == p["count"] * p["members"]
    assert row["delivered"] == row["expected"]
    assert row["lost"] == 0


def _check_fields(row):
    for key in ("server", "pass", "elapsed_s", *COMMON_FIELDS):
        assert key in row, (key, row)
    if row["ok"]:
        for key in KIND_FIELDS[row["kind"]]:
            assert key in row, (key, row)


@needs_picows
def test_smoke_every_scenario_ran(smoke):
    _out, _proc, rows = smoke
    assert {(r["server"], r["scenario"]) for r in rows} == {
        (s, sc.name) for s in ("ours", "autobahn") for sc in QUICK_SCENARIOS
    } | {("ours", sc.name) for sc in QUICK_WORKERS_SCENARIOS} | {
        ("sendloop", sc.name) for sc in QUICK_SCENARIOS if sc.kind == "fanout"}
    for row in rows:
        _check_fields(row)


@needs_picows
def test_smoke_the_bare_send_loop_floor_delivers_every_message(smoke):
    _out, _proc, rows = smoke
    for sc in QUICK_SCENARIOS:
        if sc.kind == "fanout":
            _check_every_message_delivered(_row(rows, "sendloop", sc.name), sc)


@needs_picows
def test_smoke_workers_with_redis(smoke):
    out, _proc, rows = smoke
    (sc,) = QUICK_WORKERS_SCENARIOS
    row = _row(rows, "ours", sc.name)
    _check_every_message_delivered(row, sc)
    assert row["workers"] == 2 and row["server_processes"] == 2
    # Redis's and the supervisor's CPU are measured apart from the workers'.
    assert row["redis_cpu_us_per_delivery"] is not None
    assert row["supervisor_cpu_us_per_delivery"] is not None
    table = (out / "latest.md").read_text()
    assert "--workers 2" in table and "| workers' CPU µs/delivery (summed) |" in table


def test_workers_table_has_one_column_per_scenario_and_no_made_up_figures():
    rows = [{"server": "ours", "scenario": "workers2-fanout-5000x10", "kind": "fanout",
             "ok": True, "offered_per_s": 50000, "delivered_per_s": 49990.0, "lost_pct": 0.0,
             "p50_ms": 20.0, "p99_ms": 40.0, "server_cpu_us_per_delivery": 6.25,
             "redis_cpu_us_per_delivery": 0.05, "server_cpu_share": 0.31}]
    table = make_workers_table(aggregate(rows), benchlib.WORKERS_SCENARIOS, "ours")
    lines = table.splitlines()
    assert lines[0] == "| metric | workers2-fanout-5000x10 | workers2-fanout-5000x20 |"
    cpu = next(line for line in lines if "summed" in line)
    assert cpu == "| workers' CPU µs/delivery (summed) | 6.25 | n/a |"
    supervisor = next(line for line in lines if "supervisor" in line)
    assert supervisor.endswith("| n/a | n/a |")  # not in the row: n/a, never 0


@needs_picows
def test_smoke_echo_against_ours(smoke):
    _out, _proc, rows = smoke
    for sc in QUICK_SCENARIOS:
        if sc.kind != "echo":
            continue
        row = _row(rows, "ours", sc.name)
        assert row["ok"], row
        p = sc.params
        assert row["connected"] == p["conns"]
        assert row["messages"] == p["conns"] * p["count"]
        assert row["mismatched"] == 0
        assert row["msgs_per_s"] > 0
        assert row["p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
        assert row["client_cpu_share"] is not None


@needs_picows
def test_smoke_idle_against_ours(smoke):
    _out, _proc, rows = smoke
    row = _row(rows, "ours", "idle-5000")
    assert row["ok"], row
    assert row["connected"] == row["conns"] == 20
    assert row["still_open"] == 20
    assert row["handshakes_per_s"] > 0
    assert row["rss_before_kb"] > 0 and row["rss_after_kb"] > 0


@needs_picows
def test_smoke_fanout_against_raw_autobahn(smoke):
    _out, _proc, rows = smoke
    for sc in QUICK_SCENARIOS:
        if sc.kind != "fanout":
            continue
        row = _row(rows, "autobahn", sc.name)
        _check_every_message_delivered(row, sc)
        assert row["ready"] is True


@needs_picows
def test_smoke_fanout_against_ours_delivers_every_message(smoke):
    _out, _proc, rows = smoke
    for sc in QUICK_SCENARIOS:
        if sc.kind != "fanout":
            continue
        row = _row(rows, "ours", sc.name)
        assert row["ok"], row
        _check_every_message_delivered(row, sc)


@needs_picows
def test_smoke_report_written(smoke):
    out, proc, _rows = smoke
    text = (out / "latest.md").read_text()
    assert text in proc.stdout
    assert ("| scenario | metric | ours | raw Autobahn | bare send() loop | ours vs raw "
            "Autobahn | ours vs bare send() loop |") in text
    assert "Load client CPU share" in text
    # Which fan-out loop ours ran (the test command builds the C one).
    import realtime._fanout

    loop = "C" if realtime._fanout.send_each else "Python"
    assert "ours: autobahn " in text and f"fan-out loop {loop}" in text


@needs_picows
def test_chart_from_smoke_rows(smoke, tmp_path):
    if importlib.util.find_spec("matplotlib") is None and not UNDER_CI:
        pytest.skip("the chart needs matplotlib (the test extra)")
    out, _proc, _rows = smoke
    png = tmp_path / "chart.png"
    subprocess.run([sys.executable, str(BENCH / "chart.py"), str(out / "latest.jsonl"),
                    str(png), "--servers", "ours,autobahn", "--quick"], check=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
