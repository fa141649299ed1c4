"""Regenerate the Python modules of the dkt.v1 protocol with grpcio-tools.

Usage: `python proto/generate.py` (or `python -m dkt.proto.generate`) from anywhere.

protoc names generated imports after the .proto path (`from dkt.v1 import relay_pb2`),
but the package installs as `dkt.proto.dkt.v1` (pyproject maps `dkt.proto` onto
proto/), so the imports are rewritten after generation. The committed modules are
exactly what this script writes; tests/test_relay_proto.py checks that.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("dkt/v1/relay.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

# `from dkt.v1 import x_pb2` and `import dkt.v1.x_pb2` -> the installed package path.
_IMPORT_FIXES = (
    (re.compile(r"^from dkt\.v1 import ", re.M), "from dkt.proto.dkt.v1 import "),
    (re.compile(r"^import dkt\.v1\.", re.M), "import dkt.proto.dkt.v1."),
)


def generated_files(proto_file: str) -> list[str]:
    """Paths (relative to the output root) that protoc writes for one .proto file."""
    stem = proto_file.removesuffix(".proto")
    return [stem + suffix for suffix in GENERATED_SUFFIXES]


def generate(out_root: Path) -> list[Path]:
    """Generate every module of PROTO_FILES under `out_root` and return their paths."""
    from grpc_tools import protoc

    out_root.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = []
    for proto_file in PROTO_FILES:
        for rel in generated_files(proto_file):
            path = out_root / rel
            text = path.read_text()
            for pattern, replacement in _IMPORT_FIXES:
                text = pattern.sub(replacement, text)
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="output root (default: proto/ itself)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
