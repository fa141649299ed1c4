"""The dkt.v1 protocol: relay.proto and its generated modules (do not edit those by hand)."""
