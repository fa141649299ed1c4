"""The relay server and the Flower conductor (ServerApp)."""
