"""The client `ipfleet.client()` returns: ipyparallel's, made to outlive lost engines
and a restarted controller.

- Load-balanced views retry a task on another engine when its engine dies
  (`task_retries`, default 3): spot nodes are lost as a matter of course.
- ipyparallel's task scheduler keeps the tasks it has not finished in memory, so
  a restarted controller has never heard of them, and their results never come.
  This client keeps each load-balanced request it sends until its reply arrives.
  When replies stop coming (`stall_seconds`), it asks the controller which of
  the waiting tasks it knows; those it does not know, twice in a row, are sent
  again, unchanged: same message id, so the AsyncResult the user holds gets
  the result. Like retries, this assumes a task may run twice.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime

import ipyparallel as ipp

from bootstrap.ipfleet_node import wire

DEFAULT_TASK_RETRIES = 3
# Task ids per status request: about 400 KB of ids, far under the controller's bound.
STATUS_BATCH = 10_000
# Waiting tasks asked about first: the oldest, and as many spread over the rest.
SAMPLE = 100
# How long a look at the waiting tasks waits for a controller still taking them in.
CATCH_UP_SECONDS = 120.0
log = logging.getLogger("ipfleet.client")
UNKNOWN_TASK = re.compile(r"No such message: ([^'\"\s]+)")


def sample(msg_ids: list[str]) -> list[str]:
    """The first SAMPLE of MSG_IDS (the oldest, in the order kept), and SAMPLE more
    spread over the rest."""
    return msg_ids[:SAMPLE] + msg_ids[SAMPLE :: max(1, len(msg_ids) // SAMPLE)]


class ControllerUnreachable(RuntimeError):
    pass


class FleetClient(ipp.Client):
    """`ipyparallel.Client` plus retries by default and recovery of tasks a controller lost."""

    def __init__(
        self,
        *args,
        task_retries: int = DEFAULT_TASK_RETRIES,
        recover_lost_tasks: bool = True,
        stall_seconds: float = 5.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.task_retries = task_retries
        self.stall_seconds = stall_seconds
        # Tasks sent again after the controller lost them (for users and the twin's report).
        self.tasks_sent_again = 0
        self._waiting: dict[str, tuple[float, dict, list, object]] = {}
        self._waiting_lock = threading.Lock()
        self._last_reply = time.monotonic()
        self._send_raw = self.session.send
        self.session.send = self._send_and_keep  # the session is this client's own
        self._watch_stop = threading.Event()
        if recover_lost_tasks:
            threading.Thread(target=self._watch, name="ipfleet-lost-tasks", daemon=True).start()

    # -- what users call ------------------------------------------------------------

    def load_balanced_view(self, targets=None, **kwargs):
        """ipyparallel's view, with `retries` set to this client's `task_retries` unless given."""
        kwargs.setdefault("retries", self.task_retries)
        return super().load_balanced_view(targets, **kwargs)

    def hand_over(self, new: FleetClient) -> int:
        """After the controller was replaced (a new address: this client cannot follow),
        send every task still waiting here through NEW, under the same message ids, so
        that its replies resolve the AsyncResults this client handed out. Returns how
        many tasks were handed over. Keep this client open until they are done."""
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        moved = 0
        for msg_id, (_sent, msg, buffers, ident) in waiting.items():
            future = self._futures.get(msg_id)
            if future is None or future.done():
                continue
            new._futures[msg_id] = future
            new.metadata[msg_id] = self.metadata[msg_id]
            if msg_id in self._output_futures:
                new._output_futures[msg_id] = self._output_futures[msg_id]
            new.outstanding.add(msg_id)
            new.history.append(msg_id)
            new._resend(msg_id, msg, buffers, ident)
            moved += 1
        new.tasks_sent_again += self.tasks_sent_again + moved
        if moved:
            log.warning("handed %d waiting tasks over to the new controller", moved)
        return moved

    def engine_ids(self, timeout: float = 10.0) -> list[int]:
        """The engines the controller has registered now, asked with a bound.

        Not queue_status: that lists every id the controller ever gave (they are never
        reused) and waits forever for a controller that is gone. The connection
        request is answered with the engines registered at this moment.
        """
        return sorted(int(k) for k in self._ask("connection_request", None, timeout)["engines"])

    def close(self, linger=None):
        if hasattr(self, "_watch_stop"):  # not when __init__ failed
            self._watch_stop.set()
        super().close(linger)

    # -- keeping what was sent -------------------------------------------------------

    def _send_and_keep(self, stream, msg_or_type, *args, **kwargs):
        sent = self._send_raw(stream, msg_or_type, *args, **kwargs)
        if (
            isinstance(msg_or_type, dict)
            and stream is getattr(self, "_task_stream", None)
            and msg_or_type["header"]["msg_type"] == "apply_request"
        ):
            with self._waiting_lock:
                self._waiting[msg_or_type["header"]["msg_id"]] = (
                    time.monotonic(),
                    msg_or_type,
                    list(kwargs.get("buffers") or []),
                    kwargs.get("ident"),
                )
        return sent

    def _handle_apply_reply(self, msg):
        self._last_reply = time.monotonic()
        with self._waiting_lock:
            self._waiting.pop(msg["parent_header"].get("msg_id"), None)
        return super()._handle_apply_reply(msg)

    # -- finding and resending lost tasks ---------------------------------------------

    def _watch(self) -> None:
        while not self._watch_stop.wait(1.0):
            if self._closed:
                return
            quiet = time.monotonic() - self._last_reply
            if not self._waiting or quiet < self.stall_seconds:
                continue
            try:
                self.recover_lost_tasks()
            except ControllerUnreachable as e:
                log.warning("%s", e)
            except Exception:  # never let the watcher die: it is what recovers the work
                log.exception("looking for lost tasks failed")
            self._last_reply = time.monotonic()  # look again after another quiet spell

    def recover_lost_tasks(self, grace: float = 2.0, timeout: float = 10.0) -> int:
        """Send again the waiting tasks the controller does not know; returns how many."""
        now = time.monotonic()
        with self._waiting_lock:
            waiting = sorted((sent, m) for m, (sent, *_rest) in self._waiting.items() if now - sent >= grace)
        candidates = [m for _sent, m in waiting]
        # A restarted controller has lost every task its scheduler held, the oldest too;
        # a controller that is only behind knows the oldest. A sample tells them apart
        # in one small request, so a long queue costs the controller little to watch.
        if not self._unknown_to_controller(sample(candidates), timeout):
            return 0
        unknown = self._after_catching_up(self._unknown_to_controller(candidates, timeout), timeout)
        if not unknown:
            return 0
        with self._waiting_lock:
            lost = [(m, self._waiting[m]) for m in unknown if m in self._waiting]
        for msg_id, (_sent, msg, buffers, ident) in lost:
            self._resend(msg_id, msg, buffers, ident)
        self.tasks_sent_again += len(lost)
        if lost:
            log.warning("the controller lost %d waiting tasks (was it restarted?): sent them again", len(lost))
        return len(lost)

    def _after_catching_up(self, unknown: list[str], timeout: float) -> list[str]:
        """UNKNOWN less what the controller learns of while it is still taking tasks in
        (a batch sent before): a task on its way is known a second later. Asked by
        sample while it learns, so the asking does not slow its learning."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while unknown and time.monotonic() < deadline:
            time.sleep(1.0)
            probe = sample(unknown)
            if len(self._unknown_to_controller(probe, timeout)) == len(probe):
                break  # it learns of none of them: they are lost
            unknown = self._unknown_to_controller(unknown, timeout)
        return unknown

    def _resend(self, msg_id: str, msg: dict, buffers: list, ident) -> None:
        """Send a kept request again through this client's task socket, and keep waiting
        for it. A new date gives it a new signature: an engine that saw the first send
        (it was running the task when the controller went) refuses a replay."""
        msg = {**msg, "header": {**msg["header"], "date": datetime.now(UTC)}}
        with self._waiting_lock:
            self._waiting[msg_id] = (time.monotonic(), msg, buffers, ident)
        self._io_loop.add_callback(self._send_raw, self._task_stream, msg, buffers=buffers, ident=ident)

    def _ask(self, msg_type: str, content: dict | None, timeout: float) -> dict:
        """One request to the controller and the content of its reply, with a bound
        (ipyparallel's own queries wait forever for a controller that is gone)."""
        future = self._send(self._query_stream, msg_type, content=content)
        try:
            return future.result(timeout=timeout)["content"]
        except Exception:
            raise ControllerUnreachable(f"the controller did not answer in {timeout:.0f} s") from None

    def _unknown_to_controller(self, msg_ids: list[str], timeout: float) -> list[str]:
        """Which of MSG_IDS the controller has neither pending nor done: one request per
        STATUS_BATCH tasks, whatever the number lost."""
        unknown: list[str] = []
        for start in range(0, len(msg_ids), STATUS_BATCH):
            batch = msg_ids[start : start + STATUS_BATCH]
            asked = set(batch)
            content = self._ask(wire.TASK_STATUS_REQUEST, {"msg_ids": batch}, timeout)
            if content.get("status") != "ok":
                if "Bad Message Type" in str(content.get("evalue", "")):
                    # A controller deployed before it answered in bulk.
                    return self._unknown_one_by_one(msg_ids, timeout)
                raise RuntimeError(f"the controller refused a status request: {content.get('evalue')}")
            said = content.get("unknown")
            if not isinstance(said, list):
                raise RuntimeError("the controller's status reply names no unknown tasks")
            # Only what this request asked: a reply cannot add tasks to send again, nor
            # name one twice by naming another batch's.
            unknown += [m for m in said if isinstance(m, str) and m in asked]
        return unknown

    def _unknown_one_by_one(self, msg_ids: list[str], timeout: float) -> list[str]:
        """ipyparallel's result request answers with an error naming the first id it
        does not know, so ask until it knows all that remain."""
        remaining, unknown = list(msg_ids), []
        while remaining:
            content = self._ask("result_request", {"msg_ids": remaining, "status_only": True}, timeout)
            if content.get("status") == "ok":
                break
            found = UNKNOWN_TASK.search(str(content.get("evalue", "")))
            if not found or found.group(1) not in remaining:
                raise RuntimeError(f"the controller refused a status request: {content.get('evalue')}")
            unknown.append(found.group(1))
            remaining.remove(found.group(1))
        return unknown
