"""Building blocks of the typed configuration (pydantic v2).

Every configuration class (:class:`~processor.config.AppConfig` and its sections,
:class:`~processor.policy.bidding_config.BiddingConfig`,
:class:`~processor.policy.safety.SafetyConstraints`) is a frozen pydantic dataclass wrapped by
:func:`config_errors`: constructing one validates it, and a bad value raises
:class:`~processor.errors.ConfigError` with one line per bad setting, naming it by its dotted path
(``safety.max_cpa_multiplier``), the value and what is expected. They stay dataclasses, so
``dataclasses.fields`` and ``dataclasses.replace`` (which validates again) work on them.

The numeric types here accept what YAML and environment variables give (``5``, ``"5"``, ``5.0``)
but never a fraction where an integer is expected, nor ``true`` / ``false`` where a number is.
"""

from __future__ import annotations

import collections.abc
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic_core import ArgsKwargs, PydanticCustomError

from processor.errors import ConfigError

T = TypeVar("T")

#: pydantic settings of every configuration class: unknown settings are errors.
MODEL_CONFIG = ConfigDict(extra="forbid")

_SECRET_MARKERS = (
    "password",
    "secret",
    "token",
    "key.pem",
    "credentials",
    "private",
    "user.info",  # schema registry basic.auth.user.info is "user:password"
    "oauthbearer.config",
    "jaas",
)


def is_secret(name: str) -> bool:
    """True for setting names (librdkafka, schema registry, ours) that hold secrets."""
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def mask_secrets(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``settings`` with secret values replaced by ``***``; nested mappings too."""
    return {
        k: "***" if is_secret(str(k)) else (mask_secrets(v) if isinstance(v, Mapping) else v)
        for k, v in settings.items()
    }


class SecretDict(dict[str, str]):
    """A dict whose repr never shows secret values."""

    def __repr__(self) -> str:
        return repr(mask_secrets(self))


def mask_url(url: str) -> str:
    """``url`` with the user info of ``scheme://user:password@host`` replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=f"***@{parts.netloc.rsplit('@', 1)[1]}").geturl()


class SecretUrl(str):
    """A URL whose repr never shows its user info (``https://user:password@registry``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_url(self))


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        kind, msg = "number_type", "should be a number, not true or false"
        raise PydanticCustomError(kind, msg)
    return value


def _librdkafka_values(value: Any) -> Any:
    # librdkafka takes every setting as a string; YAML gives numbers and booleans too.
    if not isinstance(value, Mapping):
        return value
    out: dict[Any, Any] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, int | float):
            out[k] = str(v)
        else:
            out[k] = v
    return out


_NUMBER = BeforeValidator(_no_bool)

Int = Annotated[int, _NUMBER]
PositiveInt = Annotated[int, _NUMBER, Field(gt=0)]
NonNegativeInt = Annotated[int, _NUMBER, Field(ge=0)]
FiniteFloat = Annotated[float, _NUMBER, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, _NUMBER, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, _NUMBER, Field(ge=0, allow_inf_nan=False)]
#: A number in [0, 1).
Fraction = Annotated[float, _NUMBER, Field(ge=0, lt=1)]
#: A number in [0, 1].
UnitInterval = Annotated[float, _NUMBER, Field(ge=0, le=1)]
#: librdkafka / registry settings: strings (numbers and booleans converted), secrets masked in
#: ``repr``.
#: A URL that may carry ``user:password@``; masked in ``repr``.
Url = Annotated[str, AfterValidator(SecretUrl)]
SecretMap = Annotated[
    Mapping[str, str],
    BeforeValidator(_librdkafka_values, json_schema_input_type=dict[str, str | int | float | bool]),
    AfterValidator(SecretDict),
]


def config_errors(section: str) -> Callable[[type[T]], type[T]]:
    """Make constructing the (pydantic dataclass) class raise :class:`ConfigError`.

    Put it above ``@pydantic.dataclasses.dataclass``. ``section`` prefixes the settings' names
    in the messages (``"safety"`` → ``safety.max_cpa_multiplier``; ``""`` for the top level).
    Nested validation (a section inside :class:`~processor.config.AppConfig`) does not call
    ``__init__``; its errors are converted where the outer class is built.
    """

    def wrap(cls: type[T]) -> type[T]:
        init = cls.__init__

        @functools.wraps(init)
        def init_raising_config_error(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise config_error(exc, cls, section) from None

        setattr(cls, "__init__", init_raising_config_error)  # noqa: B010 - mypy: no assigning
        return cls

    return wrap


#: Where a setting's value came from, by its path: ``"from BANDIT_X"``, ``"in c.yaml"``, None.
Origin = Callable[[Sequence[str]], "str | None"]


def config_error(
    exc: ValidationError, root: type[Any], prefix: str = "", origin: Origin | None = None
) -> ConfigError:
    """One :class:`ConfigError` with a line per error of ``exc`` (validating ``root``).

    Args:
        exc: The validation error.
        root: The class that was validated.
        prefix: Dotted path of ``root`` in the whole configuration (``""`` for the top).
        origin: Says where the value at a path came from; appended in parentheses.
    """
    lines = [_line(err, root, prefix, origin) for err in exc.errors(include_url=False)]
    return ConfigError("\n".join(dict.fromkeys(lines)))


def _line(err: Any, root: type[Any], prefix: str, origin: Origin | None) -> str:
    loc = _names(root, tuple(err["loc"]))
    where = ".".join([*([prefix] if prefix else []), *loc]) or "the configuration"
    source = origin(loc) if origin is not None and loc else None
    tail = f" ({source})" if source else ""
    kind = err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = _fields_at(root, tuple(err["loc"])[:-1])
        known = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown setting {where}{tail}{known}"
    if kind == "missing":
        return f"{where}: missing (required){tail}"
    msg = _SUBJECT.sub("should", str(err["msg"]).removeprefix("Value error, "), count=1)
    value = err.get("input")
    if isinstance(value, Mapping | ArgsKwargs) or is_pydantic_dataclass(type(value)):
        return f"{where}: {msg}{tail}"  # a rule across several settings of a section
    shown = "***" if any(is_secret(part) for part in loc) else _short(value)
    return f"{where}: {shown} is invalid: {msg}{tail}"


# pydantic's messages start "Input should ...", "String should ...": the line names the setting.
_SUBJECT = re.compile(r"^(Input|String|Value|Tuple|List|Dictionary|Decimal|Object) should")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _names(root: type[Any], loc: tuple[Any, ...]) -> list[str]:
    """Dotted-path parts; a positional argument of a direct construction gets its field name."""
    if loc and isinstance(loc[0], int) and is_pydantic_dataclass(root):
        names = [f.name for f in fields(root)]
        if loc[0] < len(names):
            loc = (names[loc[0]], *loc[1:])
    return [str(part) for part in loc]


def _fields_at(root: type[Any], path: tuple[Any, ...]) -> list[str] | None:
    """Setting names of the configuration class found at ``path`` under ``root``."""
    current: Any = root
    for part in path:
        current = _unwrap(current)
        if is_pydantic_dataclass(current):
            info = current.__pydantic_fields__.get(part)
            if info is None:
                return None
            current = info.annotation
        elif typing.get_origin(current) in (dict, collections.abc.Mapping):
            current = typing.get_args(current)[1]  # ``part`` is a key (an arm name)
        else:
            return None
    current = _unwrap(current)
    return sorted(f.name for f in fields(current)) if is_pydantic_dataclass(current) else None


def _unwrap(annotation: Any) -> Any:
    """``X`` of ``Annotated[X, ...]`` and of ``X | None``."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation
