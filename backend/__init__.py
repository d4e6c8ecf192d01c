"""tegrid backend: chain client, market, oracle, IoT, API and the command line."""
