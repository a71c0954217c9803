"""The cloud side: Pulumi components that declare an ipfleet cluster on AWS.

`Cluster` (cluster.py) composes the others; each file holds one component with
a typed args dataclass, and every AWS resource is parented to its component.
"""
