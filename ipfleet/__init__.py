"""ipfleet: IPython-parallel clusters on AWS, declared as code.

Kept import-light on purpose: `ipfleet --help` must answer fast, so heavy
libraries (pulumi, boto3, ipyparallel) are imported where they are used.
"""

__version__ = "0.1.0"
