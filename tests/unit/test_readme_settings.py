"""The README's configuration table lists exactly the settings the code reads, with their
defaults: every field of ``Settings`` and ``Topics`` (pydantic-settings, ``CCM_`` prefixes) has
a row, and no row names a variable the code does not read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from ccm_core.settings import Settings, Topics
from ccm_sink.cli import DSN_ENV

README = Path(__file__).resolve().parents[2] / "README.md"
ENV_TOKEN = re.compile(r"`((?:CCM|KAFKA)_[A-Z0-9_]+)`")


def settings_classes() -> dict[str, type[BaseSettings]]:
    """Env prefix -> settings class, for every settings class the services read."""
    return {"CCM_": Settings, "CCM_TOPIC_": Topics}


def code_variables() -> dict[str, Any]:
    """{environment variable: default} of every setting the code reads."""
    out: dict[str, Any] = {}
    for prefix, cls in settings_classes().items():
        for name, field in cls.model_fields.items():
            if isinstance(field.default_factory, type) and issubclass(
                field.default_factory, BaseSettings
            ):
                continue  # a nested settings class with its own prefix (topics)
            out[f"{prefix}{name.upper()}"] = field.default
    out["KAFKA_BOOTSTRAP_SERVERS"] = Settings.model_fields["kafka_bootstrap_servers"].default
    out[DSN_ENV] = None  # the sink's database (ccm-tally sink postgres --dsn)
    return out


def readme_rows() -> list[tuple[list[str], list[str]]]:
    """(variables, defaults) of each row of the README's Configuration table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.startswith("| `"):
            continue
        names = ENV_TOKEN.findall(cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1])
        rows.append((names, defaults))
    return rows


def test_every_setting_the_code_reads_has_a_row_and_every_row_is_read() -> None:
    documented = {name for names, _ in readme_rows() for name in names}
    known = set(code_variables())
    assert known - documented == set(), "settings missing from the README table"
    assert documented - known == set(), "README rows for variables the code does not read"


def _same(documented: str, default: Any) -> bool:
    if isinstance(default, bool):
        return documented == str(default).lower()
    if isinstance(default, int | float):
        return float(documented) == float(default)
    return documented == str(default)


def test_documented_defaults_are_the_code_s_defaults() -> None:
    variables = code_variables()
    checked = 0
    for names, defaults in readme_rows():
        if len(names) != len(defaults):
            continue  # a row like `KAFKA_…` / `CCM_KAFKA_…` with one default for both
        for name, documented in zip(names, defaults, strict=True):
            default = variables[name]
            if default is None:
                continue
            assert _same(documented, default), f"{name}: README {documented!r}, code {default!r}"
            checked += 1
    assert checked >= 15
