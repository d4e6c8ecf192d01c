"""Chain client: compiler, contract bindings, transactions. Knows no market rules."""
