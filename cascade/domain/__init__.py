"""The domain: what a state change is, independent of actors, HTTP and files.

Importable without pykka, aiohttp or msgpack: records are plain values.
"""
