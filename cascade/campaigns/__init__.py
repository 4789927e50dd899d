"""Campaigns: one template version sent to many recipients, now or at a time."""
