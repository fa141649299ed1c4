"""The agent: the Flower ClientApp (agent_app.py), its placement and per-message runtime
(agent_runtime.py), the long-lived worker process (agent_worker.py) and the relay-backed
prediction exchange (relay_exchange.py)."""
