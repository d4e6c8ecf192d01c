"""The HTTP API of the market (FastAPI). Build it with :func:`backend.api.app.create_app`."""
