"""Delivery providers, one a module."""

from .base import DeliveryOutcome, OutgoingMessage, Provider
from .log import LogProvider
from .memory import MemoryProvider

__all__ = ["DeliveryOutcome", "LogProvider", "MemoryProvider", "OutgoingMessage", "Provider"]
