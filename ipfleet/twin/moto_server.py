"""moto server, made to refuse and wait where Auto Scaling does.

Usage: python -m ipfleet.twin.moto_server -H ADDRESS -p PORT (moto.server's arguments)

moto plays an Auto Scaling group's size but not its rules. Three things AWS
does that ipfleet relies on, or must not get wrong, are added here:

- SetDesiredCapacity outside the group's minimum and maximum is refused with
  AWS's ValidationError (moto would take any number);
- with a termination lifecycle hook, a node leaving the group waits in
  Terminating:Wait (still listed, its instance still running in EC2) until the
  hook is completed, instead of vanishing at once;
- CompleteLifecycleAction completes a waiting node's hook, and is refused for a
  node or hook that has no action waiting, as AWS refuses it.

The twin's reconciler (ipfleet/twin/reconciler.py) plays the rest: the node in
Terminating:Wait learns it from its instance metadata, and the hook's timeout.
"""

from __future__ import annotations

import functools
import sys
import threading

from moto.autoscaling import models, responses
from moto.autoscaling.exceptions import ValidationError
from moto.core.responses import EmptyResult

WAIT = "Terminating:Wait"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"


def _terminating_hook(group) -> str | None:
    backend = group.autoscaling_backend
    return next(
        (
            hook.name
            for hook in backend.lifecycle_hooks.values()
            if hook.auto_scaling_group_name == group.name and hook.lifecycle_transition == TERMINATING
        ),
        None,
    )


_moto_group_set_desired = models.FakeAutoScalingGroup.set_desired_capacity


def _group_set_desired(self, new_capacity):
    """moto's scale-in, but a leaving node stays listed in Terminating:Wait while the
    group has a termination hook (moto drops it and terminates its instance)."""
    waiting = [s for s in self.instance_states if s.lifecycle_state == WAIT]
    self.instance_states = [s for s in self.instance_states if s.lifecycle_state != WAIT]
    before = list(self.instance_states)
    if _terminating_hook(self):
        # A leaving instance keeps running while its hook waits (AWS terminates it once the
        # hook completes): moto would terminate it in EC2 at once.
        ec2 = self.autoscaling_backend.ec2_backend
        ec2.terminate_instances = lambda instance_ids: []
        try:
            _moto_group_set_desired(self, new_capacity)
        finally:
            del ec2.terminate_instances  # moto's own method again
    else:
        _moto_group_set_desired(self, new_capacity)
    if _terminating_hook(self):
        for state in before:
            if state not in self.instance_states:
                state.lifecycle_state = WAIT
                waiting.append(state)
    self.instance_states = self.instance_states + waiting


_moto_backend_set_desired = models.AutoScalingBackend.set_desired_capacity


def _backend_set_desired(self, group_name, desired_capacity):
    group = self.autoscaling_groups.get(group_name)
    if group is not None and desired_capacity is not None:
        if desired_capacity > group.max_size:
            raise ValidationError(
                f"New SetDesiredCapacity value {desired_capacity} is above max value "
                f"{group.max_size} for the AutoScalingGroup."
            )
        if desired_capacity < group.min_size:
            raise ValidationError(
                f"New SetDesiredCapacity value {desired_capacity} is below min value "
                f"{group.min_size} for the AutoScalingGroup."
            )
    return _moto_backend_set_desired(self, group_name, desired_capacity)


def complete_lifecycle_action(self) -> EmptyResult:
    """AutoScalingResponse.complete_lifecycle_action (moto has none)."""
    backend = self.autoscaling_backend
    name = self._get_param("AutoScalingGroupName")
    hook = self._get_param("LifecycleHookName")
    instance_id = self._get_param("InstanceId")
    group = backend.autoscaling_groups.get(name)
    if group is None or _terminating_hook(group) != hook:
        raise ValidationError(f"No Lifecycle Hook found for group {name} with name {hook}.")
    waiting = [s for s in group.instance_states if s.lifecycle_state == WAIT and s.instance.id == instance_id]
    if not waiting:
        raise ValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")
    group.instance_states = [s for s in group.instance_states if s not in waiting]
    backend.ec2_backend.terminate_instances([instance_id])  # the hook done, the instance goes
    return EmptyResult()


# moto's server answers on many threads, and a scale-in above rewrites a group's list
# of instances in steps: Auto Scaling's calls on groups take turns here, so that none
# sees a group halfway through a change (AWS's answers are consistent too).
_groups_lock = threading.RLock()


def _one_at_a_time(method):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with _groups_lock:
            return method(self, *args, **kwargs)

    return locked


def install() -> None:
    # Patched into moto's classes (setattr: replacing methods is the point).
    setattr(models.FakeAutoScalingGroup, "set_desired_capacity", _group_set_desired)  # noqa: B010
    setattr(models.AutoScalingBackend, "set_desired_capacity", _backend_set_desired)  # noqa: B010
    setattr(responses.AutoScalingResponse, "complete_lifecycle_action", complete_lifecycle_action)  # noqa: B010
    for name in (
        "set_desired_capacity",
        "complete_lifecycle_action",
        "describe_auto_scaling_groups",
        "describe_auto_scaling_instances",
        "terminate_instance_in_auto_scaling_group",
        "update_auto_scaling_group",
    ):
        setattr(responses.AutoScalingResponse, name, _one_at_a_time(getattr(responses.AutoScalingResponse, name)))


if __name__ == "__main__":
    install()
    from moto.server import main

    main(sys.argv[1:])
