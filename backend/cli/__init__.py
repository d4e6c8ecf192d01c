"""The ``tegrid`` command line: the one place that wires grid, chain, market, oracle and API."""
