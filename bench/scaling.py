#!/usr/bin/env python3
"""What a hundred requests a second cost, and what one, two and four Tessera instances on one
database serve: the figures of docs/scaling.md.

One dedicated PostgreSQL cluster (the embedded pgserver build, in a scratch directory, durable
commits as Tessera's own) and 1, 2 then 4 ``tessera serve`` processes on it, each on its own port
(one worker each). Load comes from wrk with bench/run.py's scripts (form.lua for
client_credentials, refresh_chain.lua walking rotation chains), one wrk per instance, the
connections shared out among them. For each point it reads the CPU time the Tessera processes and
every process of the PostgreSQL cluster used (utime + stime from /proc/<pid>/stat, with the time of
children that exited in the window) and divides by the requests answered:

- at saturation (a closed loop, ``--conns`` connections in all), with 1, 2 and 4 instances;
- at a fixed, moderate offered rate (``--rate``, one instance): each connection waits between
  requests (wrk's ``delay()``), so the rate is close to the one asked and the server is not busy.

Every point is bounded by ``--duration`` (plus a warm-up of ``--warmup``). It also reports the
machine's CPU that was neither Tessera, PostgreSQL nor wrk during each point, since other work on a
shared machine moves the throughput (the CPU per request much less).

    .venv/bin/python bench/scaling.py                       # about 2.5 minutes
    .venv/bin/python bench/scaling.py --duration 5 --instances 1,2 --json /tmp/scaling.json
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    AUTH, AUDIENCE, CC_FORM, CLIENT_ID, CLIENT_SECRET, PASSWORD, USERNAME, Server, cli, free_port, post_form,
    tessera_env, wait_ready, wrk,
)

TICK = os.sysconf("SC_CLK_TCK")
GRANTS = ("cc", "refresh")
LOGIN = {"grant_type": "password", "username": USERNAME, "password": PASSWORD, "scope": "api.read"}


# --- CPU time from /proc ----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, float, float] | None:
    """(parent pid, process group, own CPU s, CPU s of waited-for children) of ``pid``, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    ppid, pgrp = int(fields[1]), int(fields[2])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, pgrp, (utime + stime) / TICK, (cutime + cstime) / TICK


def _all_stats() -> dict[int, tuple[int, int, float, float]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def cpu_seconds(tessera_groups: list[int], postmaster: int) -> dict[str, float]:
    """CPU seconds so far of the Tessera process groups (their leaders started with a session of
    their own) and of the PostgreSQL cluster (the postmaster and its children). A process that exits
    takes its time with it unless its parent waited for it: the leader's and the postmaster's
    ``cutime``/``cstime`` carry those (PostgreSQL backends of closed connections, for one)."""
    stats = _all_stats()
    groups = set(tessera_groups)
    tessera = sum(own for pid, (_, pgrp, own, _) in stats.items() if pgrp in groups)
    tessera += sum(stats[pid][3] for pid in tessera_groups if pid in stats)
    database = sum(own for pid, (ppid, _, own, _) in stats.items() if pid == postmaster or ppid == postmaster)
    database += stats[postmaster][3] if postmaster in stats else 0.0
    return {"tessera": tessera, "postgres": database}


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat), so far."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / TICK


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the wrk runs)."""
    times = os.times()
    return times.children_user + times.children_system


# --- the cluster and the instances -------------------------------------------------------------------


@dataclass
class Instance:
    server: Server
    base: str


class Deployment:
    """One PostgreSQL cluster of its own, and Tessera instances on it, started as they are asked for."""

    def __init__(self, work: Path, pool_size: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            self.pg: Any = pgserver.get_server(work / "pg", cleanup_mode="stop")
        self.work = work
        self.dsn = self.pg.get_uri()
        self.postmaster = int(Path(work / "pg" / "postmaster.pid").read_text().split()[0])
        self.kek = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self.pool_size = pool_size
        self.instances: list[Instance] = []
        env = self.env(len(self.instances), free_port())
        try:
            # The client and user, made before any server starts (the CLI migrates the database).
            cli(env, "clients", "create", CLIENT_ID, "--grant-types", "client_credentials,password,refresh_token",
                "--scopes", "api.read api.write", "--audiences", AUDIENCE, "--secret-stdin", stdin=CLIENT_SECRET)
            cli(env, "users", "create", USERNAME, "--password-stdin", stdin=PASSWORD)
        except BaseException:
            self.pg.cleanup()
            raise

    def env(self, index: int, port: int) -> dict[str, str]:
        env = tessera_env(self.work / f"tessera-{index}", port, 1)
        env.update(TESSERA_DATABASE_URL=self.dsn, TESSERA_KEY_ENCRYPTION_KEY=self.kek,
                   TESSERA_DB_POOL_SIZE=str(self.pool_size))
        return env

    def scale_to(self, count: int) -> None:
        while len(self.instances) < count:
            port = free_port()
            index = len(self.instances)
            server = Server([sys.executable, "-m", "tessera.server.cli", "serve"], self.env(index, port),
                            self.work / f"tessera-{index}.log")
            base = f"http://127.0.0.1:{port}"
            wait_ready(base + "/readyz", server)
            self.instances.append(Instance(server, base))

    def cpu(self) -> dict[str, float]:
        return cpu_seconds([i.server.process.pid for i in self.instances], self.postmaster)

    def close(self) -> None:
        for instance in self.instances:
            instance.server.stop()
        self.pg.cleanup()


# --- one measured point --------------------------------------------------------------------------------


def delayed_script(work: Path, script: str, delay_ms: float) -> str:
    """A wrk script that is bench/wrk/``script`` with a pause of ``delay_ms`` before each request of a
    connection (wrk calls ``delay()`` after each answer): an offered rate instead of a closed loop."""
    path = work / f"delayed-{script}"
    path.write_text(f'dofile("{HERE / "wrk" / script}")\n'
                    f"local pause = {delay_ms:.3f}\n"
                    "function delay() return pause end\n")
    return str(path)


def refresh_tokens(base: str, count: int) -> list[str]:
    """``count`` refresh tokens, each the start of a family of its own, by the password grant (a few
    logins in flight, so that the server's argon2 pool works on both cores)."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: str(post_form(base + "/token", LOGIN)["refresh_token"]), range(count)))


Job = tuple[str, str, float, int, None, int, dict[str, str]]


def prepare(deployment: Deployment, grant: str, conns: int, seconds: float, delay_ms: float | None) -> list[Job]:
    """One wrk run per instance, ``conns`` connections shared out among them; for refresh, the
    seed tokens made now (wrk asks a connection's next request before it hands over the previous
    answer, so each connection starts with two)."""
    instances = deployment.instances
    shares = [conns // len(instances) + (1 if i < conns % len(instances) else 0) for i in range(len(instances))]
    script = "form.lua" if grant == "cc" else "refresh_chain.lua"
    if delay_ms is not None:
        script = delayed_script(deployment.work, script, delay_ms)
    jobs: list[Job] = []
    for index, (instance, share) in enumerate(zip(instances, shares)):
        extra = CC_FORM
        if grant == "refresh":
            tokens = deployment.work / f"tokens-{index}.txt"
            tokens.write_text("\n".join(refresh_tokens(instance.base, 2 * share + 2)) + "\n")
            extra = {"TOKENS_FILE": str(tokens), "WRK_THREADS": "1", "AUTH": AUTH}
        jobs.append((instance.base + "/token", script, seconds, share, None, 1, extra))
    return jobs


def run_jobs(jobs: list[Job]) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: wrk(*job), jobs))


def wal_counters(dsn: str) -> dict[str, float]:
    """pg_stat_wal's WAL records, bytes, writes and syncs so far (PostgreSQL 14+; empty before)."""
    import asyncio

    import asyncpg

    async def ask() -> dict[str, float]:
        connection = await asyncpg.connect(dsn)
        try:
            if int(await connection.fetchval("SHOW server_version_num")) < 140000:
                return {}
            row = await connection.fetchrow("SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")
            assert row is not None
            return {key: float(value) for key, value in dict(row).items()}
        finally:
            await connection.close()

    return asyncio.run(ask())


def point(deployment: Deployment, grant: str, conns: int, args: argparse.Namespace,
          delay_ms: float | None = None) -> dict[str, Any]:
    """A warm-up, then one measured run; CPU taken just around the measured run (after the logins
    that made its refresh tokens)."""
    run_jobs(prepare(deployment, grant, conns, args.warmup, delay_ms))
    jobs = prepare(deployment, grant, conns, args.duration, delay_ms)
    time.sleep(0.5)  # the warm-up's last answers and the logins' hashing are done
    wal_before = wal_counters(deployment.dsn)
    before, busy, wrk_before, started = deployment.cpu(), machine_busy(), children_cpu(), time.monotonic()
    results = run_jobs(jobs)
    after, busy_after, wrk_after = deployment.cpu(), machine_busy(), children_cpu()
    window = time.monotonic() - started
    wal_after = wal_counters(deployment.dsn)
    answered = sum(r["requests"] - r["errors"] for r in results)
    seconds = max(r.get("duration_s", r.get("seconds", 0.0)) for r in results)
    tessera, postgres = after["tessera"] - before["tessera"], after["postgres"] - before["postgres"]
    wrk_cpu = wrk_after - wrk_before
    return {
        "grant": grant, "instances": len(deployment.instances), "conns": conns,
        "mode": "saturation" if delay_ms is None else "offered rate", "delay_ms": delay_ms,
        "rps": answered / seconds, "answered": answered, "errors": sum(r["errors"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results), "p99_ms": max(r["p99_ms"] for r in results),
        "tessera_cpu_s": tessera, "postgres_cpu_s": postgres, "wrk_cpu_s": wrk_cpu, "window_s": window,
        "tessera_cores": tessera / window, "postgres_cores": postgres / window,
        # WAL per request: records, bytes, and the writes and fsyncs that put it on disk.
        "wal_per_request": {key: (wal_after[key] - wal_before[key]) / max(answered, 1) for key in wal_after},
        "tessera_us": 1e6 * tessera / max(answered, 1), "postgres_us": 1e6 * postgres / max(answered, 1),
        # What the rest of the machine used meanwhile (other work on a shared machine), in cores.
        "other_cores": max(0.0, (busy_after - busy) - tessera - postgres - wrk_cpu) / window,
    }


def idle(deployment: Deployment, seconds: float) -> dict[str, Any]:
    """What the instances and the cluster use with no requests at all (timers, the janitor, ...), in cores."""
    before, started = deployment.cpu(), time.monotonic()
    time.sleep(seconds)
    after, window = deployment.cpu(), time.monotonic() - started
    return {"instances": len(deployment.instances), "seconds": window,
            "tessera_cores": (after["tessera"] - before["tessera"]) / window,
            "postgres_cores": (after["postgres"] - before["postgres"]) / window}


# --- report ----------------------------------------------------------------------------------------


def report(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        f"# Tessera scaling: {meta['when']}, {meta['machine']}, PostgreSQL {meta['postgres']}",
        "",
        "| grant | mode | instances | conns | req/s | p99 ms | Tessera µs/req | PostgreSQL µs/req |"
        " Tessera vCPU per 100/s | PostgreSQL vCPU per 100/s | Tessera cores | PostgreSQL cores | WAL B/req |"
        " WAL syncs/req | wrk cores | other cores | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in data["points"]:
        lines.append(
            f"| {p['grant']} | {p['mode']} | {p['instances']} | {p['conns']} | {p['rps']:,.0f} | {p['p99_ms']:.1f} |"
            f" {p['tessera_us']:,.0f} | {p['postgres_us']:,.0f} | {p['tessera_us'] / 1e4:.4f} |"
            f" {p['postgres_us'] / 1e4:.4f} | {p['tessera_cores']:.2f} | {p['postgres_cores']:.2f} |"
            f" {p['wal_per_request'].get('wal_bytes', 0):,.0f} | {p['wal_per_request'].get('wal_sync', 0):.3f} |"
            f" {p['wrk_cpu_s'] / p['window_s']:.2f} | {p['other_cores']:.2f} |"
            f" {p['errors']} |"
        )
    for i in data["idle"]:
        lines.append(f"- idle, {i['instances']} instance(s), {i['seconds']:.0f} s without requests: Tessera"
                     f" {i['tessera_cores']:.4f} cores, PostgreSQL {i['postgres_cores']:.4f} cores")
    lines += ["", "(vCPU per 100/s = CPU seconds per request × 100; µs/req = CPU µs per answered request;"
              " other cores = the machine's busy CPU that was none of these, during the point)"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each measured point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each point")
    parser.add_argument("--conns", type=int, default=32, help="connections in all at saturation")
    parser.add_argument("--rate", type=float, default=400.0, help="offered rate of the moderate points (req/s)")
    parser.add_argument("--rate-conns", type=int, default=8, help="connections of the moderate points")
    parser.add_argument("--instances", default="1,2,4", help="instance counts at saturation, ascending")
    parser.add_argument("--grants", default="cc,refresh")
    parser.add_argument("--pool-size", type=int, default=10, help="TESSERA_DB_POOL_SIZE of each instance")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("scaling: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    counts = sorted({int(n) for n in args.instances.split(",") if n})
    grants = [g for g in args.grants.split(",") if g in GRANTS]
    points, idles = [], []
    with tempfile.TemporaryDirectory(prefix="tessera-scaling-", ignore_cleanup_errors=True) as tmp:
        deployment = Deployment(Path(tmp), args.pool_size)
        try:
            for count in counts:
                deployment.scale_to(count)
                time.sleep(1.0)  # the new instance's start-up work is done
                idles.append(idle(deployment, min(args.duration, 4.0)))
                for grant in grants:
                    if count == 1:
                        # Each connection waits so that the connections together offer about --rate.
                        delay = max(0.0, 1000 * args.rate_conns / args.rate)
                        points.append(point(deployment, grant, args.rate_conns, args, delay))
                        print(report_line(points[-1]), file=sys.stderr)
                    points.append(point(deployment, grant, args.conns, args))
                    print(report_line(points[-1]), file=sys.stderr)
            version = postgres_version(deployment.dsn)
        finally:
            deployment.close()
    data = {"meta": {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
                     "postgres": version, "load_average": os.getloadavg(),
                     "args": {k: str(v) for k, v in vars(args).items()}},
            "points": points, "idle": idles}
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


def report_line(p: dict[str, Any]) -> str:
    return (f"{p['grant']} {p['mode']} x{p['instances']}: {p['rps']:,.0f}/s, Tessera {p['tessera_us']:,.0f} µs/req,"
            f" PostgreSQL {p['postgres_us']:,.0f} µs/req, errors {p['errors']}")


def postgres_version(dsn: str) -> str:
    import asyncio

    import asyncpg

    async def ask() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            row = await connection.fetchrow(
                "SELECT current_setting('server_version') AS v, current_setting('synchronous_commit') AS s,"
                " current_setting('fsync') AS f")
            assert row is not None
            return f"{row['v']} (fsync={row['f']}, synchronous_commit={row['s']})"
        finally:
            await connection.close()

    return asyncio.run(ask())


if __name__ == "__main__":
    raise SystemExit(main())
