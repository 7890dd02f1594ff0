"""Practice settings and the core's configuration: data, not code."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .contracts import MAX_MINUTES
from .profiles import ProfileSet, load_profiles

DateOfServicePolicy = Literal["last_day_of_month", "threshold_met"]


class PracticeSettings(BaseModel):
    """Per-practice settings (rules file sections 4-6). Defaults apply to unlisted practices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_zone: str = "America/Detroit"
    close_grace_days: Annotated[int, Field(ge=0, le=60)] = 5
    date_of_service_policy: DateOfServicePolicy = "last_day_of_month"
    max_log_minutes: Annotated[int, Field(gt=0, le=MAX_MINUTES)] = 480  # the wire's bound
    timely_filing_months: Annotated[int, Field(gt=0)] = 12
    clock_skew_minutes: Annotated[int, Field(ge=0)] = 10
    enrollment_feed: bool = True
    """The practice sends enrollment events (consent, eligibility); false switches the
    profile's consent and eligibility gates off, and its records say so."""

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


@dataclass(frozen=True)
class CoreConfig:
    """Everything the tally core needs to decide: payer profiles and practice settings."""

    profiles: ProfileSet = field(default_factory=load_profiles)
    default_practice: PracticeSettings = field(default_factory=PracticeSettings)
    practices: dict[str, PracticeSettings] = field(default_factory=dict)
    require_known_practice: bool = False

    def practice(self, practice_id: str) -> PracticeSettings | None:
        found = self.practices.get(practice_id)
        if found is not None:
            return found
        return None if self.require_known_practice else self.default_practice


def parse_practices(text: str) -> tuple[PracticeSettings, dict[str, PracticeSettings], bool]:
    """``[defaults]`` (optional), ``require_known_practice`` and ``[practices.ID]`` tables."""
    data = tomllib.loads(text)
    defaults = PracticeSettings(**data.get("defaults", {}))
    base = defaults.model_dump()
    practices = {
        pid: PracticeSettings(**{**base, **body}) for pid, body in data.get("practices", {}).items()
    }
    return defaults, practices, bool(data.get("require_known_practice", False))


def load_config(
    profiles_file: Path | None = None, practices_file: Path | None = None
) -> CoreConfig:
    profiles = load_profiles(profiles_file)
    if practices_file is None:
        return CoreConfig(profiles=profiles)
    defaults, practices, strict = parse_practices(practices_file.read_text(encoding="utf-8"))
    return CoreConfig(profiles, defaults, practices, strict)
