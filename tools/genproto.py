"""Generate the Python gRPC stubs from proto/ into services/ (or a given directory).

The stubs are committed; tests/test_proto_stubs.py regenerates them into a
temporary directory and fails if anything differs, so they cannot drift.
"""

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("letskencrypt/v1/*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return protos


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "services"
    generate(out_dir)
    # The package marker is ours, not protoc's.
    (out_dir / "letskencrypt" / "v1" / "__init__.py").touch()


if __name__ == "__main__":
    main()
