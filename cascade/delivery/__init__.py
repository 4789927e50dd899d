"""Delivery to providers: the async dispatcher and the built-in providers."""
