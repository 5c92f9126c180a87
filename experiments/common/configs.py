"""Config files and the dataclasses that check them: one convention for every study.

A study's settings are a frozen dataclass whose `__post_init__` names a bad value as
`--config.<field>=<value>`. Its config files start from `config_dict_of(Settings)` (every field at
its default; a None default becomes a typed placeholder, so the command line can still set it)
and `settings_from(Settings, config)` turns the parsed ConfigDict back into the dataclass,
refusing unknown and missing fields with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

from ml_collections import config_dict

from dpjax import randomness as randomness_lib


def config_dict_of(cls: type) -> config_dict.ConfigDict:
  """Every field of the dataclass `cls` at its default, as a ConfigDict."""
  hints = typing.get_type_hints(cls)
  config = config_dict.ConfigDict()
  for field in dataclasses.fields(cls):
    default = field.default
    if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
      default = field.default_factory()
    if default is None:
      kind = next(t for t in typing.get_args(hints[field.name]) if t is not type(None))
      setattr(config, field.name, config_dict.placeholder(typing.get_origin(kind) or kind))
    elif default is not dataclasses.MISSING:
      setattr(config, field.name, default)
  return config


def settings_from(cls: type, config: Mapping[str, Any] | config_dict.ConfigDict,
                  require_all: bool = False, **converted) -> Any:
  """The dataclass `cls` built from `config`; unknown (and, with `require_all`, missing) fields
  are refused with the list of valid ones. `converted` replaces values (e.g. tuples from lists)."""
  values = dict(config.to_dict() if isinstance(config, config_dict.ConfigDict) else config)
  names = [field.name for field in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(names))
  missing = sorted(set(names) - set(values)) if require_all else []
  if unknown or missing:
    raise ValueError(f"unknown config field(s) {unknown}" + (f", missing: {missing}" if missing else "")
                     + f"; valid fields: {', '.join(names)}.")
  values.update({k: v(values[k]) if callable(v) else v for k, v in converted.items() if k in values})
  return cls(**values)


def as_flags(**values) -> dict:
  """Field values keyed as the command line spells them (`config.<field>`), for messages."""
  return {f"config.{name}": value for name, value in values.items()}


class PrivateRunSettings:
  """Mixin for a settings dataclass with `seed` and `reproducible_private_randomness` fields."""

  def randomness(self) -> randomness_lib.PrivateRandomness:
    return randomness_lib.from_flag(self.reproducible_private_randomness, self.seed)

  def public_dict(self) -> dict:
    """The settings fit for the released config.json: the seed hidden when it keys the noise."""
    return randomness_lib.redact(dataclasses.asdict(self), self.randomness())
