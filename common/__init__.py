"""The DKT method: model, loss, streams, probe set, replay, metrics, peers, engine.

Nothing in here imports Flower or grpc.
"""
