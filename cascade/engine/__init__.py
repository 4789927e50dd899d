"""The sequencing engine: templates, recipients, send actors on pykka shards,
timers, delivery and per-step metrics. `Engine` is the front of it."""

from ..delivery.providers import DeliveryOutcome, LogProvider, MemoryProvider, OutgoingMessage, Provider
from ..domain.errors import AlreadyFinished, CascadeError, Conflict, InvalidInput, NotFound, Overloaded, TemplateInvalid
from .clock import Clock, ManualClock, RealClock, ScaledClock
from .supervisor import Engine, EngineConfig, Event

__all__ = [
    "AlreadyFinished", "CascadeError", "Clock", "Conflict", "DeliveryOutcome", "Engine", "EngineConfig",
    "Event", "InvalidInput", "LogProvider", "ManualClock", "MemoryProvider", "NotFound", "OutgoingMessage",
    "Overloaded", "Provider", "RealClock", "ScaledClock", "TemplateInvalid",
]
