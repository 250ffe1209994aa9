"""The pydantic-settings side of `load_config`: the TOML file with `AMSD_*` overrides merged over it.

A module of its own so that only loading imports pydantic-settings (about 125 modules and 9 MB of
resident memory); `amsd run` hands the validated configuration to a fresh process image without it
(see `amsd.daemon`).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from amsd.config import ENV_DELIMITER, ENV_PREFIX, AmsdConfig, ConfigError, format_validation_error, merge_env_overrides

_toml_path: ContextVar[Path] = ContextVar("amsd_config_toml_path")


def settings_from(toml_path: Path) -> AmsdConfig:
    """Validate the file at `toml_path` with the environment merged over it; ConfigError on failure."""
    token = _toml_path.set(toml_path)
    try:
        config: AmsdConfig = _AmsdSettings()
    except ValidationError as exc:
        raise ConfigError(f"{toml_path}: invalid configuration:\n{format_validation_error(exc)}") from None
    except SettingsError as exc:
        # pydantic-settings failed to parse an environment variable (e.g. bad JSON for a table).
        cause = exc.__cause__
        detail = format_validation_error(cause) if isinstance(cause, ValidationError) else str(exc)
        raise ConfigError(f"environment override: {detail}") from None
    finally:
        _toml_path.reset(token)
    return config


class _TomlWithEnvSource(PydanticBaseSettingsSource):
    """The TOML file with `AMSD_*` environment variables merged over it."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False  # unused: __call__ builds the whole dict

    def __call__(self) -> dict[str, Any]:
        toml = TomlConfigSettingsSource(self.settings_cls, toml_file=_toml_path.get())
        data: dict[str, Any] = toml.toml_data
        env = EnvSettingsSource(
            self.settings_cls, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, case_sensitive=False
        )()
        # A nested-looking variable for a section that does not exist is a typo, not something to ignore.
        # (Plain AMSD_FOO variables, such as the test suite's AMSD_CONFORMANCE_DIR, are not config.)
        for name in os.environ:
            upper = name.upper()
            if upper.startswith(ENV_PREFIX) and ENV_DELIMITER in upper[len(ENV_PREFIX) :]:
                section = upper[len(ENV_PREFIX) :].split(ENV_DELIMITER)[0].lower()
                if section not in AmsdConfig.model_fields:
                    raise ConfigError(f"{upper}: unknown section {section!r} in environment override")
        overrides = {key: value for key, value in env.items() if key in AmsdConfig.model_fields}
        merged: dict[str, Any] = merge_env_overrides(data, overrides)
        return merged


class _AmsdSettings(BaseSettings, AmsdConfig):
    model_config = SettingsConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        case_sensitive=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _TomlWithEnvSource(settings_cls))
