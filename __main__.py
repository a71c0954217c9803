"""The ipfleet Pulumi program: `pulumi up -s NAME` runs this with stacks/Pulumi.NAME.yaml.

Parse and validate the stack's settings, look up the image and the network,
declare the cluster, export what `ipfleet fetch` and users need.
`ipfleet plan` runs this same file under Pulumi's mock runtime.
"""

import pulumi
import pulumi_aws as aws

from components.cluster import Cluster, ClusterArgs
from components.lookups import find_image, find_network, place
from components.preflight import preflight
from ipfleet.settings import SettingsError, parse_settings
from ipfleet.stack_config import from_pulumi

try:
    settings = parse_settings(pulumi.get_stack(), from_pulumi())
    preflight(settings)
except SettingsError as error:
    # RunError: a clean message for the user, no Python traceback.
    raise pulumi.RunError(error.report(pulumi.get_stack())) from None

# Every resource carries the stack's tags; the provider adds them for us.
provider = aws.Provider(
    "aws",
    region=settings.region,
    default_tags={"tags": {"ipfleet:stack": settings.stack, **settings.tags}},
)
invoke = pulumi.InvokeOptions(provider=provider)
try:
    network = find_network(settings, invoke)
    # Only zones that offer the instance types asked for (not every zone offers every type).
    placement = place(settings, network, invoke)
except SettingsError as error:
    raise pulumi.RunError(error.report(pulumi.get_stack())) from None
controller_image = find_image(settings, settings.controller_architecture, invoke)
engine_image = (
    controller_image
    if settings.engine_architecture == settings.controller_architecture
    else find_image(settings, settings.engine_architecture, invoke)
)

cluster = Cluster(
    settings.stack,
    ClusterArgs(
        settings=settings,
        network=network,
        placement=placement,
        controller_image=controller_image,
        engine_image=engine_image,
    ),
    pulumi.ResourceOptions(providers=[provider]),
)
for key, value in cluster.outputs.items():
    pulumi.export(key, value)
