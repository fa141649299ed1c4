"""The relay: the gRPC service (service.py) with its validation, messages and rejections,
token auth (auth.py), events, metrics and the status HTTP server, the process that serves
them (server.py; `python -m dkt.server.relay`), and its store (store/)."""
