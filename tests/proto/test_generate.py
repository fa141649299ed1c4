"""The committed dkt.v1 modules are exactly what proto/generate.py produces."""

from __future__ import annotations

from pathlib import Path

from dkt.proto import generate


def test_committed_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)

    assert written, "generation wrote no files"
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = generate.PROTO_ROOT / rel
        assert committed.exists(), f"{rel} is generated but not committed; run proto/generate.py"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{rel} differs from a fresh generation; run `python proto/generate.py` and commit"
        )


def test_generated_modules_import_under_the_dkt_proto_package() -> None:
    from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc

    assert relay_pb2.DESCRIPTOR.package == "dkt.v1"
    assert relay_pb2.DESCRIPTOR.services_by_name["Relay"].full_name == "dkt.v1.Relay"
    assert hasattr(relay_pb2_grpc, "RelayStub")
