"""The controller's task scheduler, at a per-task cost that does not grow with the fleet.

ipyparallel's TaskScheduler decides every task in Python loops over every engine: the
high-water mark's filter (`available_engines`, and `can_run` per engine in `maybe_run`)
and, after every result, a list of every engine's load (`update_graph`), each step
reading traitlets attributes. At 1,024 engines that is most of the controller's CPU per
task. This subclass keeps every decision the same and makes the common ones at C speed:

- the engines under the high-water mark are found by `itertools.compress`;
- a task with no dependencies, targets or blacklist goes to those engines directly
  (for such a task ipyparallel's `can_run` is exactly "under the high-water mark");
- after a result, whether an engine has just come under the mark is `in`, not a loop.

Tasks with dependencies, targets or a blacklist, and every other path, are ipyparallel's
own. Installed by the controller's ipcontroller_config.py (the app builds its task
scheduler by name, as it does the hub).
"""

from __future__ import annotations

from collections import deque
from itertools import compress

from ipyparallel import error
from ipyparallel.controller import app, task_scheduler
from ipyparallel.controller.task_scheduler import TaskScheduler
from traitlets import Integer


class FlatTaskScheduler(TaskScheduler):
    keep_tasks = Integer(
        0,
        config=True,
        help="Finished tasks remembered for dependencies, the newest (ipfleet:ipyparallel.keepTasks); 0: all.",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._finished: deque[str] = deque()

    def available_engines(self) -> list[int]:
        loads = self.loads
        hwm = self.hwm
        if not hwm:
            return list(range(len(loads)))
        return list(compress(range(len(loads)), map(hwm.__gt__, loads)))

    def maybe_run(self, job) -> bool:
        if job.follow or job.targets or job.blacklist:
            return super().maybe_run(job)
        available = self.available_engines()
        if not available:
            return False
        # With the mark, ipyparallel picks among the engines under it. Least-load picks
        # the first least-loaded engine, which is under the mark whenever one is: the
        # whole list gives the same engine without building a list of loads.
        self.submit_task(job, None if self.scheme is task_scheduler.leastload else available)
        return True

    def update_graph(self, dep_id=None, success=True) -> None:
        hwm = self.hwm
        if dep_id is not None and hwm and (hwm - 1) in self.loads:
            # ipyparallel rechecks its whole queue here, after dropping DEP_ID's
            # dependents (they are in the queue); `dep_id=None` is that path.
            self.graph.pop(dep_id, None)
            dep_id = None
        super().update_graph(dep_id, success)

    # -- forgetting what finished long ago ---------------------------------------------
    # ipyparallel remembers every task that ever finished (for dependencies on it), a few
    # hundred bytes each: a million tasks would hold the controller's memory. The newest
    # keep_tasks are remembered, as the hub keeps them; a task that depends on one
    # forgotten fails as one naming a task never sent (InvalidDependency).

    def handle_result(self, idents, parent, raw_msg, success=True) -> None:
        super().handle_result(idents, parent, raw_msg, success)
        self._remember(parent["msg_id"])

    def fail_unreachable(self, msg_id, why=error.ImpossibleDependency) -> None:
        queued = msg_id in self.queue_map
        super().fail_unreachable(msg_id, why)
        if queued:
            self._remember(msg_id)

    def _remember(self, msg_id: str) -> None:
        keep = self.keep_tasks
        if not keep:
            return
        self._finished.append(msg_id)
        if len(self._finished) > keep + max(1, keep // 10):
            self._forget(len(self._finished) - keep)

    def _forget(self, count: int) -> None:
        done, completed, failed, ids = self.all_done, self.all_completed, self.all_failed, self.all_ids
        for _ in range(count):
            msg_id = self._finished.popleft()
            for known in (done, completed, failed, ids):
                known.discard(msg_id)
            engine = self.destinations.pop(msg_id, None)
            if engine is not None:
                self.completed.get(engine, set()).discard(msg_id)
                self.failed.get(engine, set()).discard(msg_id)


def install() -> None:
    """From ipcontroller_config.py: the app starts this scheduler for load-balanced tasks."""
    app.TaskScheduler = FlatTaskScheduler
