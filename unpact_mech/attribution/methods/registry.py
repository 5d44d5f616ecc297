"""The attribution-method registry: name -> :class:`~unpact_mech.attribution.methods.base.AttributionMethod`
subclass."""

from __future__ import annotations

from typing import Any, TypeVar

from unpact_mech.attribution.methods.base import AttributionMethod
from unpact_mech.errors import InputError

ATTRIBUTION_METHODS: dict[str, type[AttributionMethod]] = {}
M = TypeVar("M", bound=type[AttributionMethod])


def register_attribution_method(cls: M) -> M:
    """Class decorator (put it above ``@dataclass``): add a method under its ``name`` (names are unique)."""
    if "__dataclass_fields__" not in vars(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass: put @dataclass below @register_attribution_method")
    if cls.name in ATTRIBUTION_METHODS and ATTRIBUTION_METHODS[cls.name] is not cls:
        raise ValueError(f"attribution method {cls.name!r} is already registered")
    ATTRIBUTION_METHODS[cls.name] = cls
    return cls


def get_attribution_method(name: str, **options: Any) -> AttributionMethod:
    """The registered method ``name`` with ``options`` (the others at their defaults), validated (:meth:`validate`)."""
    if name not in ATTRIBUTION_METHODS:
        raise InputError(f"unknown attribution method {name!r}; choose one of: {', '.join(ATTRIBUTION_METHODS)}")
    cls = ATTRIBUTION_METHODS[name]
    valid = cls.default_options()
    unknown = sorted(k for k in options if k not in valid)
    if unknown:
        raise InputError(
            f"attribution method {name}: unknown option(s) {', '.join(unknown)} "
            f"(its options: {', '.join(valid) or 'none'})"
        )
    method = cls(**options)
    method.validate()
    return method
