"""ipfleet: IPython-parallel clusters on AWS, declared as code.

Kept import-light on purpose: `ipfleet --help` must answer fast, so heavy
libraries (pulumi, boto3, ipyparallel) are imported where they are used.
"""

__version__ = "0.1.0"


def client(stack: str | None = None, **kwargs):
    """A ready `ipyparallel.Client` for a deployed stack (see `ipfleet connect --help`).

    import ipfleet
    rc = ipfleet.client("mystack")

    Inside `ipfleet run STACK -- COMMAND`, `ipfleet.client()` is STACK's.
    """
    from ipfleet.connect import client as _client

    return _client(stack, **kwargs)
