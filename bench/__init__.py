"""Benchmarks: commands that print measured figures (JSON) beside a baseline measured in the same
run, run by ``tegrid bench <grid|chain|api|oracle|e2e>``.

- ``grid``: the Neural Grid validator against ``naive`` (a full pandapower ``runpp`` per trade);
- ``chain``: ledger gas per trade and per reading in batches, against one trade per transaction;
- ``api``: signed orders per second through HTTP, against one request at a time;
- ``oracle``: meter readings relayed per second and gas per reading, batched against one per tx;
- ``e2e``: the whole pipeline for a community day against the naive one.

``naive`` is also the grid tests' independent AC check of an approved set. Nothing in the product
packages imports this package (checked by ``lint-imports``).

Named ``bench`` (like the command), not ``benchmarks``: cchecksum, a web3 dependency, installs a
top-level ``benchmarks`` package into site-packages, which would shadow ours for the installed
``tegrid`` script.
"""
