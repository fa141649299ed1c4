"""Every use of Flower beyond its public app API, in one package: the typed messages
(messages.py), run submission and the Control API (runs.py), SuperLink and SuperNode
processes (processes.py) and the SuperNode's Runtime API (runtime.py). Written against
flwr 1.42; outside this package only `flwr.app`, `flwr.clientapp` and `flwr.serverapp`
are imported (tests/test_import_rules.py)."""
