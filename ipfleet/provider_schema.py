"""Would the AWS provider accept the plan? Every input checked against pulumi-aws's own types.

The mock runtime accepts any input: a misspelt key, a property on the wrong
object or a number where the provider wants a string would pass `ipfleet plan`
and fail only at `pulumi up`. This walks each planned resource's inputs
(camelCase, as the engine sends them) recursively against the SDK's input
classes (`InstanceArgs`, `InstanceMetadataOptionsArgs`...): unknown keys,
missing required properties and wrong scalar types.

This is not policy (that is `ipfleet.checks`): it answers only "is this a
well-formed input for the provider".
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import sys
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from ipfleet.plan import Plan


@dataclass(frozen=True)
class SchemaProblem:
    resource: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.path}: {self.message}"


@dataclass(frozen=True)
class _Shape:
    """What a value must be: a scalar type, a list or map of shapes, or an input class."""

    kind: str  # "str", "int", "float", "bool", "any", "list", "map", "object", "union"
    item: _Shape | None = None
    args_class: type | None = None
    # For "union": any of these (an IAM policy is a JSON string or a PolicyDocument object).
    options: tuple[_Shape, ...] = ()


ANY = _Shape("any")


def args_class_for(token: str) -> type | None:
    """`aws:ec2/instance:Instance` -> pulumi_aws.ec2.InstanceArgs (None for other packages)."""
    package, _, rest = token.partition(":")
    if package != "aws":
        return None
    module_path, _, name = rest.partition(":")
    module = module_path.split("/", 1)[0]
    sdk = importlib.import_module("pulumi_aws" if module == "index" else f"pulumi_aws.{module}")
    resource = getattr(sdk, name, None)
    # Where a nested type has the resource's name (BucketServerSideEncryptionConfiguration is
    # both), the SDK calls the resource's own arguments `NameInitArgs`, in the resource's module.
    own = sys.modules.get(getattr(resource, "__module__", ""))
    for candidate in (f"{name}InitArgs", f"{name}Args"):
        if own is not None and candidate in vars(own):
            return vars(own)[candidate]
    return getattr(sdk, f"{name}Args", None)


@cache
def _properties(args_class: type) -> dict[str, tuple[str, bool]]:
    """camelCase name -> (snake_case parameter, required) for one input class."""
    parameters = inspect.signature(args_class).parameters
    out = {}
    for attribute, value in vars(args_class).items():
        wire = getattr(getattr(value, "fget", None), "_pulumi_name", None)
        if wire and attribute in parameters:
            out[wire] = (attribute, parameters[attribute].default is inspect.Parameter.empty)
    return out


def _shape(annotation: Any, namespace: dict) -> _Shape:
    """The SDK's annotation (Input[...] unions, forward references) reduced to a _Shape."""
    if isinstance(annotation, str):
        annotation = typing.ForwardRef(annotation)
    if isinstance(annotation, typing.ForwardRef):
        name = annotation.__forward_arg__
        if name.startswith("Output"):
            return ANY
        target = namespace.get(name.strip("'\""))
        if target is None:
            return ANY
        annotation = target
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        members = [
            m
            for m in typing.get_args(annotation)
            if m is not type(None)
            and typing.get_origin(m) is not collections.abc.Awaitable
            and not (isinstance(m, typing.ForwardRef) and m.__forward_arg__.startswith("Output"))
        ]
        # Input classes come with a TypedDict twin (XArgsDict), which reads as "any": the
        # class says the same more precisely, so the twin is dropped.
        shapes = [s for s in (_shape(m, namespace) for m in members) if s.kind != "any"] or [ANY]
        distinct = list(dict.fromkeys(shapes))
        return distinct[0] if len(distinct) == 1 else _Shape("union", options=tuple(distinct))
    if origin in (list, collections.abc.Sequence):
        (item,) = typing.get_args(annotation) or (Any,)
        return _Shape("list", _shape(item, namespace))
    if origin in (dict, collections.abc.Mapping):
        args = typing.get_args(annotation)
        return _Shape("map", _shape(args[1], namespace) if args else ANY)
    if inspect.isclass(annotation):
        if annotation is bool:
            return _Shape("bool")
        if issubclass(annotation, str):  # str, and the SDK's string enums
            return _Shape("str")
        if annotation is int:
            return _Shape("int")
        if annotation is float:
            return _Shape("float")
        if getattr(annotation, "_pulumi_input_type", False) or annotation.__name__.endswith("Args"):
            return _Shape("object", args_class=annotation)
        if typing.is_typeddict(annotation):
            return ANY
    return ANY


def _namespace(args_class: type) -> dict:
    return vars(sys.modules[args_class.__module__])


def check_inputs(args_class: type, inputs: dict, path: str = "") -> list[tuple[str, str]]:
    """(path, problem) for every input `args_class` would not accept."""
    problems = []
    properties = _properties(args_class)
    for key, value in inputs.items():
        where = f"{path}.{key}" if path else key
        if key not in properties:
            problems.append((where, f"{args_class.__name__} has no property {key!r}"))
            continue
        parameter = inspect.signature(args_class).parameters[properties[key][0]]
        problems += _check_value(_shape(parameter.annotation, _namespace(args_class)), value, where)
    for key, (_, required) in properties.items():
        if required and key not in inputs:
            where = f"{path}.{key}" if path else key
            problems.append((where, f"required by {args_class.__name__} and missing"))
    return problems


def _check_value(shape: _Shape, value: Any, where: str) -> list[tuple[str, str]]:
    if value is None or shape.kind == "any":
        return []
    if shape.kind == "union":
        tried = [_check_value(option, value, where) for option in shape.options]
        return [] if any(not problems for problems in tried) else tried[0]
    expected = {"str": (str,), "float": (int, float), "bool": (bool,)}.get(shape.kind)
    if expected is not None:
        ok = isinstance(value, expected) and not (shape.kind == "float" and isinstance(value, bool))
        return [] if ok else [(where, f"must be a {shape.kind}, not {type(value).__name__} {value!r}")]
    if shape.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [(where, f"must be an int, not {type(value).__name__} {value!r}")]
    if shape.kind == "list":
        if not isinstance(value, list):
            return [(where, f"must be a list, not {type(value).__name__}")]
        return [p for i, v in enumerate(value) for p in _check_value(shape.item or ANY, v, f"{where}[{i}]")]
    if shape.kind == "map":
        if not isinstance(value, dict):
            return [(where, f"must be a map, not {type(value).__name__}")]
        return [p for k, v in value.items() for p in _check_value(shape.item or ANY, v, f"{where}.{k}")]
    assert shape.args_class is not None  # an "object" shape always names its input class
    if not isinstance(value, dict):
        return [(where, f"must be an object ({shape.args_class.__name__}), not {type(value).__name__}")]
    return check_inputs(shape.args_class, value, where)


def check_plan(plan: Plan) -> list[SchemaProblem]:
    """Every AWS resource in the plan against the SDK's input types (providers and components skipped)."""
    problems = []
    for resource in plan.resources:
        if not resource.custom or resource.type.startswith("pulumi:providers:"):
            continue
        args_class = args_class_for(resource.type)
        if args_class is None:
            problems.append(SchemaProblem(resource.name, resource.type, "no such resource type in pulumi-aws"))
            continue
        problems += [
            SchemaProblem(resource.name, path, message) for path, message in check_inputs(args_class, resource.inputs)
        ]
    return problems
