"""Neural Grid: pandapower networks, interval base states, trade validation, hosting capacity. Imports nothing from backend."""
