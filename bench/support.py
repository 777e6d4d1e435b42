"""What the benchmarks share: a throwaway database, the server's version, and stopping
the processes a benchmark started."""

import subprocess
import tempfile
from pathlib import Path

from django.db import connection


def with_throwaway_database(run, *, prefix: str):
    """``run()`` in a database made from the migrations next to the configured one (a
    temporary file on SQLite), dropped afterwards."""
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        directory = tempfile.mkdtemp(prefix=f"bench-{prefix}-")
        settings_dict.setdefault("TEST", {})["NAME"] = str(Path(directory) / "bench.sqlite3")
    else:
        settings_dict.setdefault("TEST", {})["NAME"] = f"bench_{prefix}_{settings_dict['NAME']}"
    old_name = settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        return run()
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0, keepdb=False)


def database_version() -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("select sqlite_version()")
        else:
            cursor.execute("show server_version")
        return cursor.fetchone()[0]


def stop_processes(processes) -> None:
    """Terminate every process, then wait for each (killing one that takes over 10 s)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


class StealMeter:
    """The share of this virtual machine's CPU time its host gave to others (``steal`` in
    /proc/stat) since the meter started: what makes its speed drift from hour to hour.
    None where the kernel does not report it."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(f) for f in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None

    def share(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end[1] == self._start[1]:
            return None
        return (end[0] - self._start[0]) / (end[1] - self._start[1])


def reference_workload_ms(repeats: int = 7) -> float:
    """How long a fixed piece of pure-Python work (JSON, dicts, strings and calls, as a
    request's code is made of) takes this machine now, in ms, the fastest of ``repeats``.

    This VM's speed swings by half within minutes with no steal to show for it; a run's
    figures are comparable with another run's only next to this one.
    """
    import json
    import time

    document = {"messages": [{"role": "user", "content": "hello " * 20, "n": n} for n in range(20)]}

    def work() -> int:
        total = 0
        for _ in range(400):
            decoded = json.loads(json.dumps(document))
            total += sum(len(m["content"].split()) for m in decoded["messages"])
            total += len({f"{key}-{value}" for key, value in enumerate(decoded)})
        return total

    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best * 1000
