"""GET /metrics: exact counts after a scripted flow, bounded labels, the pool, the key ages, and the
sum over several worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
from aiohttp.test_utils import TestClient

from tessera.server.ops import events
from tests.helpers import PASSWORD, SECRET, basic, eventually, post_token, tessera_server
from tests.processes import Process, free_port, parse_metrics, sample, wait_until_ready


async def scrape(http: TestClient) -> dict:  # type: ignore[type-arg]
    response = await http.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(await response.text())


async def test_metrics_after_a_scripted_flow_show_exact_counts(client, admin):
    await admin.client("svc")
    await admin.client("web", grant_types=("password",), scopes=("profile",))
    await admin.user("alice", PASSWORD)
    for _ in range(3):
        assert (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET)))[0] == 200
    for _ in range(2):
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        assert (await post_token(client, form, headers=basic("web", SECRET)))[0] == 200
    for _ in range(2):
        assert (await post_token(client, {"grant_type": "client_credentials"}, headers=basic("svc", "wrong-secret")))[0] == 401
    assert (await post_token(client, {"grant_type": "urn:nope"}, headers=basic("svc", SECRET)))[0] == 400
    form = {"grant_type": "client_credentials", "scope": "admin"}
    assert (await post_token(client, form, headers=basic("svc", SECRET)))[0] == 400
    for n in range(3):
        assert (await client.get(f"/random/path/{n}")).status == 404

    m = await scrape(client)
    assert sample(m, "tessera_http_requests_in_flight") == 1  # the scrape itself; every other one ended
    assert sample(m, "tessera_tokens_issued_total", grant_type="client_credentials", client_id="svc") == 3
    assert sample(m, "tessera_tokens_issued_total", grant_type="password", client_id="web") == 2
    assert sample(m, "tessera_oauth_errors_total", endpoint="/token", error="invalid_client") == 2
    assert sample(m, "tessera_oauth_errors_total", endpoint="/token", error="unsupported_grant_type") == 1
    assert sample(m, "tessera_oauth_errors_total", endpoint="/token", error="invalid_scope") == 1
    assert sample(m, "tessera_oauth_errors_total", endpoint="unmatched", error="not_found") == 3
    assert sample(m, "tessera_http_requests_total", endpoint="/token", method="POST", status="200") == 5
    assert sample(m, "tessera_http_requests_total", endpoint="/token", method="POST", status="401") == 2
    assert sample(m, "tessera_http_requests_total", endpoint="/token", method="POST", status="400") == 2
    assert sample(m, "tessera_http_request_duration_seconds_count", endpoint="/token", method="POST") == 9
    # A failed client authentication never becomes a client_id label.
    assert not [key for key in m if ("client_id", "wrong-secret") in key[1]]


async def test_requests_are_counted_at_the_end_of_their_turn_and_a_scrape_counts_what_is_pending():
    from tessera.server.ops.metrics import Metrics

    series = Metrics()
    for status in (200, 200, 400):
        series.request_done("/token", "POST", status, 0.004, "invalid_request" if status == 400 else None)
    before = parse_metrics((await series.render()).decode())  # a scrape in the same turn sees them
    assert sample(before, "tessera_http_requests_total", endpoint="/token", method="POST", status="200") == 2
    assert sample(before, "tessera_oauth_errors_total", endpoint="/token", error="invalid_request") == 1

    series.request_done("/token", "POST", 200, 0.004, None)
    labels = {"endpoint": "/token", "method": "POST", "status": "200"}
    assert series._values is not None
    assert series._values.get_sample_value("tessera_http_requests_total", labels) == 2  # not yet
    await asyncio.sleep(0)  # the end of the turn, with no scrape
    assert series._values.get_sample_value("tessera_http_requests_total", labels) == 3


async def test_random_paths_and_methods_do_not_make_new_series(client):
    for n in range(20):
        await client.get(f"/x{n}/{'a' * n}")
        await client.request(f"BREW{n}", "/token")
    labels = {value for _, pairs in (await scrape(client)) for _, value in pairs}
    assert not [v for v in labels if v.startswith(("/x", "BREW"))]


async def test_events_reported_by_other_features_are_counted(client):
    events.refresh_rotated("svc")
    events.refresh_rotated("svc")
    events.refresh_retry_answered("svc")
    events.rotations_sent(1)
    events.rotations_sent(40)
    events.refresh_reuse_detected(family_id="f", client_id="svc", user_id="u", remote="127.0.0.1")
    events.families_revoked("reuse", 1)
    events.families_revoked("logout", 3)
    events.families_revoked("logout", 0)
    events.key_rotated("new", "old")
    events.key_revoked("old")
    events.login_failed("user", "alice", "127.0.0.1")
    m = await scrape(client)
    assert sample(m, "tessera_refresh_rotations_total", client_id="svc") == 2
    assert sample(m, "tessera_refresh_retries_total", client_id="svc") == 1
    assert sample(m, "tessera_refresh_rotation_batch_rows_count") == 2
    assert sample(m, "tessera_refresh_rotation_batch_rows_sum") == 41
    assert sample(m, "tessera_refresh_rotation_batch_rows_bucket", le="1.0") == 1
    assert sample(m, "tessera_refresh_reuse_detected_total", client_id="svc") == 1
    assert sample(m, "tessera_refresh_families_revoked_total", reason="reuse") == 1
    assert sample(m, "tessera_refresh_families_revoked_total", reason="logout") == 3
    assert sample(m, "tessera_key_rotations_total") == 1
    assert sample(m, "tessera_key_revocations_total") == 1
    assert sample(m, "tessera_login_failures_total", kind="user") == 1
    assert not [key for key in m if ("subject", "alice") in key[1]]


async def test_key_ages_come_from_the_keyring_and_follow_the_clock(client, clock):
    clock.advance(10)  # the clock fixture started a moment before the keys were made
    before = await scrape(client)
    ages = {dict(labels)["state"]: value for (name, labels), value in before.items() if name == "tessera_signing_key_age_seconds"}
    assert set(ages) == {"active", "next"}
    assert 0 < ages["active"] < 60
    clock.advance(3600)
    after = await scrape(client)
    later = {dict(labels)["state"]: value for (name, labels), value in after.items() if name == "tessera_signing_key_age_seconds"}
    assert round(later["active"] - ages["active"], 3) == 3600


async def test_pool_waits_are_counted_when_requests_outnumber_connections(env, admin, clock):
    await admin.client("svc")
    async with tessera_server(env, clock, TESSERA_DB_POOL_SIZE="1") as http:
        statuses = await asyncio.gather(
            *(post_token(http, {"grant_type": "client_credentials"}, headers=basic("svc", SECRET)) for _ in range(20))
        )
        assert [s for s, _, _ in statuses] == [200] * 20
        m = await scrape(http)
    assert sample(m, "tessera_db_pool_max_connections") == 1
    assert sample(m, "tessera_db_pool_waits_total") > 0
    assert sample(m, "tessera_db_pool_acquire_seconds_count") >= 20
    assert sample(m, "tessera_db_pool_connections_in_use") == 0  # every connection came back


# --- several worker processes ---------------------------------------------------------------------


async def fresh_connection_get(url: str) -> tuple[int, str]:
    # A new connection per request: SO_REUSEPORT spreads connections, not requests.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url) as response:
            return response.status, await response.text()


async def issue_tokens(base: str, count: int, secret: str = SECRET) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(count):
            async with http.post(f"{base}/token", data={"grant_type": "client_credentials"}, headers=basic("svc", secret)) as r:
                statuses.append(r.status)
    return statuses


def worker_pids(lines: list[dict]) -> dict[int, int]:  # type: ignore[type-arg]
    """slot -> pid of the worker most recently started in it."""
    return {line["slot"]: line["worker_pid"] for line in lines if line.get("msg") == "worker started"}


async def wait_until_listening(server: Process, count: int) -> None:
    """/readyz answers as soon as one worker listens; wait for all of them."""

    def all_listening() -> bool:
        if len({line["pid"] for line in server.log_lines() if line.get("msg") == "listening"}) >= count:
            return True
        assert server.popen.poll() is None, server.stderr()[-2000:]
        return False

    await eventually(all_listening, timeout=30, interval=0.05, what=f"{count} workers listening",
                     details=lambda: server.stderr()[-2000:])


async def test_metrics_from_any_worker_add_up_across_workers(processes, env, admin):
    await admin.client("svc")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = processes.serve("tessera", {**env, "TESSERA_PORT": str(port), "TESSERA_WORKERS": "2", "TESSERA_DB_POOL_SIZE": "3"})
    await wait_until_ready(f"{base}/readyz", server)
    await wait_until_listening(server, 2)
    assert await issue_tokens(base, 12) == [200] * 12
    assert await issue_tokens(base, 3, secret="wrong-secret") == [401] * 3

    for _ in range(6):
        status, text = await fresh_connection_get(f"{base}/metrics")
        assert status == 200
        m = parse_metrics(text)
        assert sample(m, "tessera_tokens_issued_total", grant_type="client_credentials", client_id="svc") == 12
        assert sample(m, "tessera_oauth_errors_total", endpoint="/token", error="invalid_client") == 3
        assert sample(m, "tessera_http_requests_total", endpoint="/token", method="POST", status="200") == 12
        assert sample(m, "tessera_db_pool_max_connections") == 6  # 2 workers x TESSERA_DB_POOL_SIZE

    # Request lines reach stderr within tessera.server.ops.logs.LOG_FLUSH_SECONDS of their answers.
    async def both_workers_logged() -> set[int] | None:
        served = {line["pid"] for line in server.log_lines() if line.get("path") == "/token"}
        return served if len(served) == 2 else None

    served_by = await eventually(both_workers_logged, timeout=10, what="a /token line from each worker")
    assert served_by == set(worker_pids(server.log_lines()).values())
    # Each worker froze its start-up heap (tessera.server.serve.settle_heap): tens of thousands of objects
    # that its full collections no longer walk.
    frozen = [line["gc_frozen_objects"] for line in server.log_lines() if line.get("msg") == "listening"]
    assert len(frozen) == 2 and min(frozen) > 10_000, frozen
    assert server.stop() == 0
    stopped = {line["pid"] for line in server.log_lines() if line.get("msg") == "stopped"}
    assert stopped == served_by


async def test_a_killed_worker_is_replaced_and_its_counts_are_kept(processes, env, admin):
    await admin.client("svc")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = processes.serve("tessera", {**env, "TESSERA_PORT": str(port), "TESSERA_WORKERS": "2"})
    await wait_until_ready(f"{base}/readyz", server)
    await wait_until_listening(server, 2)
    assert await issue_tokens(base, 10) == [200] * 10
    victim = worker_pids(server.log_lines())[0]
    # A worker writes the counts of one turn of its event loop at the end of that turn, just after
    # the turn's answers went out: a kill -9 in those microseconds would lose them (and only them).
    await asyncio.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: worker_pids(server.log_lines())[0] != victim, timeout=20, interval=0.1,
                     what="the killed worker replaced")
    died = [line for line in server.log_lines() if line.get("msg") == "worker died"]
    assert [(line["worker_pid"], line["exitcode"]) for line in died] == [(victim, -signal.SIGKILL)]
    await wait_until_listening(server, 3)  # the survivor, and the replacement

    for _ in range(4):
        m = parse_metrics((await fresh_connection_get(f"{base}/metrics"))[1])
        assert sample(m, "tessera_tokens_issued_total", grant_type="client_credentials", client_id="svc") == 10
    assert await issue_tokens(base, 5) == [200] * 5
    m = parse_metrics((await fresh_connection_get(f"{base}/metrics"))[1])
    assert sample(m, "tessera_tokens_issued_total", grant_type="client_credentials", client_id="svc") == 15
    assert server.stop() == 0
    assert json.dumps(server.log_lines()).count('"msg": "worker started"') == 3


async def test_requests_in_flight_are_counted_from_start_to_answer_or_drop_and_a_scrape_sees_them():
    from tessera.server.ops.metrics import Metrics

    series = Metrics()

    async def in_flight() -> float:
        return sample(parse_metrics((await series.render()).decode()), "tessera_http_requests_in_flight")

    for _ in range(3):
        series.request_started()
    assert await in_flight() == 3  # a scrape in the same turn
    series.request_done("/token", "POST", 200, 0.004, None)
    series.request_dropped()  # cancelled: no answer, still no longer in flight
    await asyncio.sleep(0)  # the end of the turn, with no scrape
    assert series._values is not None
    assert series._values.get_sample_value("tessera_http_requests_in_flight") == 1
    series.request_done("/token", "POST", 200, 0.004, None)
    assert await in_flight() == 0


async def test_counts_of_one_turn_are_summed_into_one_increment_per_series():
    from tessera.server.ops.metrics import Metrics

    series = Metrics()
    increments: list[float] = []
    child = series.tokens_issued.labels("client_credentials", "svc")
    counted = child.inc
    child.inc = lambda amount=1: (increments.append(amount), counted(amount))  # type: ignore[method-assign]
    for _ in range(100):
        series.count(series.tokens_issued, ("client_credentials", "svc"))
    series.count(series.tokens_issued, ("password", "web"), 2)
    assert increments == []  # not before the end of the turn
    await asyncio.sleep(0)
    assert increments == [100]
    values = parse_metrics((await series.render()).decode())
    assert sample(values, "tessera_tokens_issued_total", grant_type="client_credentials", client_id="svc") == 100
    assert sample(values, "tessera_tokens_issued_total", grant_type="password", client_id="web") == 2
