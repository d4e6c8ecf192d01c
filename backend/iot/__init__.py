"""IoT platform: smart meters that sign their own readings, the MQTT transport and the message
schema.

Meters speak MQTT only; the oracle daemon (``backend.oracle``) is the one that speaks to the chain.
"""
