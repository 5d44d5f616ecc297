"""The method registry: name -> :class:`~unpact_mech.unlearning.methods.base.UnlearningMethod` subclass."""

from __future__ import annotations

from typing import TypeVar

from unpact_mech.errors import InputError
from unpact_mech.unlearning.methods.base import UnlearningMethod

UNLEARNING_METHODS: dict[str, type[UnlearningMethod]] = {}
M = TypeVar("M", bound=type[UnlearningMethod])


def register_unlearning_method(cls: M) -> M:
    """Class decorator: add a method under its ``name`` (names are unique)."""
    if cls.name in UNLEARNING_METHODS and UNLEARNING_METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is already registered")
    UNLEARNING_METHODS[cls.name] = cls
    return cls


def get_unlearning_method(name: str, **hyperparameters: float | None) -> UnlearningMethod:
    """Instantiate a registered method; ``None`` hyperparameters take the method's defaults."""
    if name not in UNLEARNING_METHODS:
        raise InputError(f"unknown unlearning method {name!r}; choose one of: {', '.join(UNLEARNING_METHODS)}")
    return UNLEARNING_METHODS[name](**hyperparameters)
