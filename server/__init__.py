"""The server host's pieces: the relay (relay/, with its store in relay/store/) and the
conductor, a Flower ServerApp (conductor/). Never imports client/."""
