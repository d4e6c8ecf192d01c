"""The oracle daemon: relays device-signed meter readings from the broker to ``MeterReadings``,
crash-safe.

Pieces: :mod:`backend.oracle.store` (durable SQLite queue), :mod:`backend.oracle.chain` (what the
daemon needs from the chain, and its web3 implementation), :mod:`backend.oracle.daemon` (ingest +
submit loops).
"""
