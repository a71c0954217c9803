"""A cluster that outlives its faults, on loopback: the controller's config exactly as
user data writes it, real ipcontroller and ipengine processes, and the client that
`ipfleet.client()` returns. The twin repeats these faults on booted nodes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootstrap.ipfleet_node import wire
from ipfleet.fleet_client import FleetClient
from tests.loopback.test_rendezvous import (
    agent,
    controller_config_from_user_data,
    create_pending_parameter,
    facts_file,
    start,
    stop,
)

BIN = Path(sys.executable).parent
TASKS = 120


def slow_square(x):
    import time

    time.sleep(0.05)
    return x * x


class Cluster:
    """One controller and N engines on loopback, the controller restartable in place."""

    def __init__(self, tmp_path: Path, aws_env: dict, engines: int, extra_config: str = ""):
        create_pending_parameter(aws_env)
        self.tmp = tmp_path
        self.profile = tmp_path / "controller" / "profile_default"
        controller_config_from_user_data(self.profile, tmp_path / "keys.json", state_dir=tmp_path)
        with (self.profile / "ipcontroller_config.py").open("a") as config:
            config.write(extra_config)
        facts = facts_file(tmp_path, "controller", self.profile, aws_env)
        assert agent(facts, "keys").returncode == 0
        self.restarts = 0
        self.controller = self._start_controller()
        published = agent(facts, "publish", "--timeout", "60")
        assert published.returncode == 0, published.stderr
        self.engine_file = self.profile / "security" / "ipcontroller-engine.json"
        (tmp_path / "ipengine_config.py").write_text("c = get_config()\nc.IPEngine.max_heartbeat_misses = 10\n")
        self.engines = [self._start_engine(i) for i in range(engines)]

    def _start_controller(self) -> subprocess.Popen:
        log = self.tmp / f"controller-{self.restarts}.log"
        return start([str(BIN / "ipcontroller"), f"--profile-dir={self.profile}"], log)

    def _start_engine(self, i: int) -> subprocess.Popen:
        return start(
            [str(BIN / "ipengine"), f"--file={self.engine_file}", f"--profile-dir={self.tmp}", "--log-level=INFO"],
            self.tmp / f"engine-{i}.log",
        )

    def restart_controller(self) -> None:
        """What systemd does on `systemctl restart ipcontroller`: stop the group, start again."""
        stop(self.controller)
        self.restarts += 1
        self.controller = self._start_controller()

    def replace_controller(self) -> None:
        """A new instance: an empty disk (no engine list, no task database); its engines
        start over (on nodes, systemd restarts them once they lose the old controller)."""
        stop(self.controller)
        for process in self.engines:
            stop(process)
        (self.profile / "log" / "engines.json").unlink()
        (self.tmp / "tasks.db").unlink()
        self.restarts += 1
        self.controller = self._start_controller()
        deadline = time.monotonic() + 30
        while not self.engine_file.exists():  # the old one removed its files on the way out
            assert time.monotonic() < deadline, "the new controller wrote no connection files"
            time.sleep(0.1)
        self.engines = [self._start_engine(i) for i in range(len(self.engines))]

    def kill_engine(self, i: int) -> None:
        os.killpg(self.engines[i].pid, signal.SIGKILL)
        self.engines[i].wait(timeout=10)

    def client(self, **kwargs) -> FleetClient:
        rc = FleetClient(str(self.profile / "security" / "ipcontroller-client.json"), timeout=30, **kwargs)
        rc.wait_for_engines(len(self.engines), timeout=60)
        return rc

    def close(self) -> None:
        for process in [*self.engines, self.controller]:
            stop(process)


@pytest.fixture
def cluster(aws_env, tmp_path, request):
    made = Cluster(tmp_path, aws_env, engines=getattr(request, "param", 2))
    try:
        yield made
    finally:
        made.close()


def wait_for_progress(result, done: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while result.progress < done:
        assert time.monotonic() < deadline, f"only {result.progress} tasks done in {timeout} s"
        time.sleep(0.05)


def test_a_restarted_controller_keeps_engine_ids_tasks_and_results(cluster):
    rc = cluster.client(stall_seconds=2.0)
    asked = []
    ask = rc._ask
    rc._ask = lambda msg_type, *args: asked.append(msg_type) or ask(msg_type, *args)  # type: ignore[method-assign]
    try:
        ids_before = sorted(rc.ids)
        first = rc.load_balanced_view().apply_async(slow_square, 7)
        assert first.get(timeout=30) == 49
        time.sleep(2.5)  # the task database commits every 2 s
        mapped = rc.load_balanced_view().map_async(slow_square, range(TASKS))
        wait_for_progress(mapped, 20)
        cluster.restart_controller()
        assert mapped.get(timeout=120) == [x * x for x in range(TASKS)]
        # The tasks the old controller had queued or running were sent again, once.
        assert 0 < rc.tasks_sent_again < TASKS
        # Found in bulk: each look at the waiting tasks is one request, however many.
        assert "result_request" not in asked
        assert 2 <= asked.count(wire.TASK_STATUS_REQUEST) <= 6
        # The same engines, by the same ids, and the restored controller still schedules.
        assert rc.engine_ids() == ids_before
        assert rc.load_balanced_view().map_sync(slow_square, range(4)) == [0, 1, 4, 9]
        # What was done before the restart is still in the controller's task database.
        assert rc.get_result(first.msg_ids[0], owner=False).get(timeout=30) == 49
    finally:
        rc.close()
    with sqlite3.connect(cluster.tmp / "tasks.db") as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type = 'table'")]
    assert tables == ["tasks"]  # one table, kept across the restart


def test_waiting_tasks_are_handed_over_to_a_replaced_controller(cluster):
    rc = cluster.client(stall_seconds=60.0)  # no resend to the old one: this is about handing over
    try:
        mapped = rc.load_balanced_view().map_async(slow_square, range(TASKS))
        wait_for_progress(mapped, 20)
        cluster.replace_controller()
        new = cluster.client()
        try:
            moved = rc.hand_over(new)
            assert 0 < moved < TASKS
            assert mapped.get(timeout=120) == [x * x for x in range(TASKS)]
            assert new.tasks_sent_again == moved
        finally:
            new.close()
    finally:
        rc.close()


@pytest.mark.parametrize("cluster", [3], indirect=True)
def test_a_killed_engine_loses_no_task(cluster):
    rc = cluster.client()
    try:
        view = rc.load_balanced_view()
        assert view.retries == 3
        mapped = view.map_async(slow_square, range(TASKS))
        wait_for_progress(mapped, 20)
        cluster.kill_engine(0)
        assert mapped.get(timeout=120) == [x * x for x in range(TASKS)]
        assert rc.tasks_sent_again == 0  # retried by the scheduler; nothing was lost
    finally:
        rc.close()


@pytest.mark.parametrize("cluster", [3], indirect=True)
def test_without_retries_a_killed_engine_fails_its_task(cluster):
    """The setting that turns retries off does: the default is what saves the tasks above."""
    import ipyparallel as ipp

    rc = cluster.client(task_retries=0)
    try:
        mapped = rc.load_balanced_view().map_async(slow_square, range(TASKS))
        wait_for_progress(mapped, 20)
        cluster.kill_engine(0)
        with pytest.raises(ipp.error.CompositeError, match="EngineError"):
            mapped.get(timeout=120)
    finally:
        rc.close()


def noop():
    return None


def test_the_controller_keeps_the_newest_finished_tasks_and_culls_the_rest(aws_env, tmp_path):
    """ipfleet:ipyparallel.keepTasks at 20 (culled every half second here, every minute
    on a node): after 100 tasks, the newest are still there, the oldest are gone from
    the task database, the hub and the scheduler, and the controller goes on."""
    cluster = Cluster(
        tmp_path,
        aws_env,
        engines=2,
        extra_config="c.FleetHub.keep_tasks = c.FlatTaskScheduler.keep_tasks = 20\nc.FleetHub.cull_seconds = 0.5\n",
    )
    try:
        rc = cluster.client()
        view = rc.load_balanced_view()
        sent = [view.apply_async(noop) for _ in range(100)]
        for result in sent:
            result.get(timeout=60)
        deadline = time.monotonic() + 30
        while True:
            kept = rc.db_query({"completed": {"$ne": None}}, keys=["msg_id"])
            if len(kept) <= 22 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        kept_ids = {record["msg_id"] for record in kept}
        assert 20 <= len(kept_ids) <= 22, len(kept_ids)
        assert sent[-1].msg_ids[0] in kept_ids
        # The oldest by completion as the task database records it (the engine's reply
        # date): one run kept the very first task, so the test asks for most of the first.
        culled = [r.msg_ids[0] for r in sent[:80] if r.msg_ids[0] not in kept_ids]
        assert len(culled) >= 75, len(culled)
        # The hub forgot them too: a culled task is unknown, a kept one known.
        assert rc._unknown_to_controller([culled[0], sent[-1].msg_ids[0]], 10) == [culled[0]]
        assert view.apply_sync(lambda: 42) == 42
        # The scheduler forgot them as well: a task after a culled one cannot run.
        with view.temp_flags(after=[culled[0]]):
            forgotten = view.apply_async(noop)
        with pytest.raises(Exception) as refused:
            forgotten.get(timeout=30)
        assert "InvalidDependency" in f"{refused.value!r} {getattr(refused.value, 'ename', '')}"
        with view.temp_flags(after=[sent[-1].msg_ids[0]]):
            assert view.apply_async(lambda: 7).get(timeout=30) == 7
    finally:
        rc.close()
        cluster.close()
    assert "culled the" in (tmp_path / "controller-0.log").read_text()
