"""One agent's learning: the two-headed model, the loss, the cl head's strategies and
replay, teachers and peers, the prediction exchange, checkpoints, and `Agent`."""
