"""AWS partitions: what an ARN starts with and where a region's endpoints live.

A region belongs to one partition (`aws`, `aws-us-gov`, `aws-cn`, the ISO ones), and its
ARNs (`arn:PARTITION:...`) and endpoint names (`SERVICE.REGION.DNS_SUFFIX`) follow from
it, as the provider's `get_partition` reports them. ipfleet supports the partitions
whose services it has been built against: the commercial one and GovCloud, which share
AWS's DNS suffix. China's partition names its service principals and the SSM agent's
bucket differently, and the ISO partitions are closed networks: refused, with the
reason, rather than half supported.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Partition:
    name: str
    dns_suffix: str

    def arn(self, service: str, region: str, account: str, resource: str) -> str:
        return f"arn:{self.name}:{service}:{region}:{account}:{resource}"

    def endpoint(self, service: str, region: str) -> str:
        return f"https://{service}.{region}.{self.dns_suffix}"


AWS = Partition("aws", "amazonaws.com")
GOVCLOUD = Partition("aws-us-gov", "amazonaws.com")


class UnsupportedPartition(ValueError):
    pass


def partition_of(region: str) -> Partition:
    """The partition of REGION, or UnsupportedPartition saying why not."""
    if region.startswith("us-gov-"):
        return GOVCLOUD
    if region.startswith("cn-"):
        raise UnsupportedPartition(
            f"{region} is in the aws-cn partition, which ipfleet does not support yet "
            "(its service principals and the SSM agent's bucket are named differently)"
        )
    if "-iso" in region:
        raise UnsupportedPartition(f"{region} is in an ISO partition, which ipfleet does not support")
    return AWS
