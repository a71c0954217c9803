"""The policy pack's entry point: Pulumi runs it; the rules live in ipfleet/policy.py."""

from pulumi_policy import PolicyPack

from ipfleet.policy import PACK_NAME, policies

PolicyPack(name=PACK_NAME, policies=policies())
