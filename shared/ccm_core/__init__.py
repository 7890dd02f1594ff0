"""ccm-tally's pure core: wire contracts, payer profiles, the tally, month arithmetic.

Importable without Kafka; no I/O and no clock reads in the billing logic.
"""

from .config import CoreConfig, PracticeSettings, load_config
from .contracts import Outcome, Reason, TimeLogged, TimeLogVoided
from .ingest import LocalTally, Source, decode, process
from .tally import PatientLedger, TallyEngine

__all__ = [
    "CoreConfig",
    "LocalTally",
    "Outcome",
    "PatientLedger",
    "PracticeSettings",
    "Reason",
    "Source",
    "TallyEngine",
    "TimeLogVoided",
    "TimeLogged",
    "decode",
    "load_config",
    "process",
]
