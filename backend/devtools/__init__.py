"""The development stack: what runs tegrid on a laptop, in the demo, the benchmarks and the tests.

- ``anvil``: the one ``AnvilProcess`` (a local chain of our own: state file, restart, kill);
- ``clock``: chain time travel on that chain (``chain_now``, ``set_time``, ``end_interval``);
- ``participants``: bulk meter registration and the funded dev accounts;
- ``devstack``: chain + contracts + participants behind ``tegrid serve --dev``;
- ``broker``: a Mosquitto broker of our own;
- ``server``: the API under uvicorn in a background thread;
- ``services``: tegrid's services as operating-system processes (the demo's process layout).

The product packages (``backend.market``, ``oracle``, ``iot``, ``api``, ``chain``, ``keeper`` and
``grid``) never import this package; ``backend.cli``, ``backend.demo``, ``bench`` (the benchmarks)
and the tests do (checked by ``lint-imports``).
"""
