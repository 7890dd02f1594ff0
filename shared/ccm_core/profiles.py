"""Payer profiles: billing rules as data, loaded from TOML.

The shipped ``profiles.toml`` holds the four profiles of the rules file; a user's own file adds
or overrides profiles by name. Nothing in the tally code names a payer.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .contracts import Activity, Role


class PayerProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    version: str
    entry_code: str = "99487"
    entry_minutes: Annotated[int, Field(gt=0)]
    addon_code: str = "99489"
    addon_first_minutes: Annotated[int, Field(gt=0)]
    addon_every_minutes: Annotated[int, Field(gt=0)]
    addon_max_units: Annotated[int, Field(ge=0)] | None = None
    counted_roles: Literal["*"] | frozenset[Role] = "*"
    excluded_roles: frozenset[Role] = frozenset()
    licensed_only: bool = False
    excluded_activities: frozenset[Activity] = frozenset()
    single_biller: bool = False
    """Only one practice may bill a patient-month (Medicare); the others' records are held."""
    enrollment_requirements: frozenset[Literal["consent", "eligibility"]] = frozenset()
    """Gates a practice with an enrollment feed must pass before a month is billable."""

    @model_validator(mode="after")
    def _order(self) -> PayerProfile:
        if self.addon_first_minutes <= self.entry_minutes:
            raise ValueError("addon_first_minutes must be above entry_minutes")
        return self

    @cached_property
    def rule_prefix(self) -> str:
        return f"{self.name}:"

    def exclusion_rule(self, role: Role, licensed: bool, activity: Activity) -> str | None:
        """The rule that keeps a log's minutes out of the tally, or None when they count.

        Rules are named ``<profile>:<rule>:<value>`` so a record says exactly why.
        """
        if self.counted_roles != "*" and role not in self.counted_roles:
            return f"{self.name}:role_not_counted:{role.value}"
        if role in self.excluded_roles:
            return f"{self.name}:excluded_role:{role.value}"
        if self.licensed_only and not licensed:
            return f"{self.name}:licensed_only:{role.value}"
        if activity in self.excluded_activities:
            return f"{self.name}:excluded_activity:{activity.value}"
        return None

    def threshold_minutes(self, level: int) -> int:
        """Qualifying minutes needed for threshold number ``level`` (1 = entry code)."""
        if level == 1:
            return self.entry_minutes
        return self.addon_first_minutes + (level - 2) * self.addon_every_minutes

    def level_for(self, minutes: int) -> int:
        """How many thresholds ``minutes`` reach: 0 none, 1 entry code, 1 + n with n add-ons."""
        if minutes < self.entry_minutes:
            return 0
        if minutes < self.addon_first_minutes:
            return 1
        addons = 1 + (minutes - self.addon_first_minutes) // self.addon_every_minutes
        if self.addon_max_units is not None:
            addons = min(addons, self.addon_max_units)
        return 1 + addons

    def code_unit(self, level: int) -> tuple[str, int]:
        """CPT code and unit number of threshold ``level``."""
        return (self.entry_code, 1) if level == 1 else (self.addon_code, level - 1)

    def max_level(self) -> int | None:
        return None if self.addon_max_units is None else 1 + self.addon_max_units


@dataclass(frozen=True)
class ProfileSet:
    profiles: dict[str, PayerProfile]

    def get(self, name: str) -> PayerProfile | None:
        return self.profiles.get(name)

    def names(self) -> list[str]:
        return sorted(self.profiles)


def parse_profiles(text: str) -> dict[str, PayerProfile]:
    data = tomllib.loads(text)
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise ValueError("profiles file must have [profiles.NAME] tables")
    return {name: PayerProfile(name=name, **body) for name, body in tables.items()}


def load_profiles(extra_file: Path | None = None) -> ProfileSet:
    """The shipped profiles, overridden or extended by ``extra_file`` (same format)."""
    shipped = resources.files("ccm_core").joinpath("profiles.toml").read_text(encoding="utf-8")
    profiles = parse_profiles(shipped)
    if extra_file is not None:
        profiles.update(parse_profiles(extra_file.read_text(encoding="utf-8")))
    return ProfileSet(profiles)
