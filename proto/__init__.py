"""The dkt.v1 wire contract: the .proto sources and generated modules (dkt/v1/), chunk
framing, payload encodings, the stored-set record both sides share, how to reach a relay,
and the relay client library (relay_client/) that the conductor and the agents use."""
