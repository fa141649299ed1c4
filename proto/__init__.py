"""The dkt.v1 protocol: .proto sources and the generated Python modules."""
