"""Channels, signals and what each channel can emit (API.md, Concepts)."""

from __future__ import annotations

__all__ = [
    "CHANNELS",
    "CHANNEL_SIGNALS",
    "DELIVERED",
    "CLICKED",
    "ENGAGEMENT",
    "FAILED",
    "SIGNALS",
    "VIEWED",
    "WAIT_MINUTES",
]

CHANNELS = ("inapp", "push", "email", "sms")

# Engagement signals in rank order: a signal meets any condition of equal or
# lower rank. Their index is the rank.
ENGAGEMENT = ("delivered", "viewed", "clicked")
DELIVERED, VIEWED, CLICKED, FAILED = 0, 1, 2, 3
SIGNALS = ("delivered", "viewed", "clicked", "failed")

CHANNEL_SIGNALS: dict[str, frozenset[str]] = {
    "inapp": frozenset({"delivered", "viewed", "clicked", "failed"}),
    "push": frozenset({"delivered", "clicked", "failed"}),
    "email": frozenset({"delivered", "viewed", "clicked", "failed"}),
    "sms": frozenset({"delivered", "clicked", "failed"}),
}

WAIT_MINUTES = (5, 10, 30, 60, 240, 1440)
