"""The committed gRPC stubs are exactly what the .proto files generate."""

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "services" / "letskencrypt" / "v1"


def generated_files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in directory.iterdir()
        if path.is_file() and path.name != "__init__.py"
    }


def test_stubs_match_protos(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        genproto = importlib.import_module("genproto")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    protos = genproto.generate(tmp_path)
    assert protos, "no .proto files found"
    fresh = generated_files(tmp_path / "letskencrypt" / "v1")
    committed = generated_files(COMMITTED)
    assert sorted(fresh) == sorted(committed), "stub files added or missing: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `make proto`"


def test_one_proto_per_service() -> None:
    for proto in (ROOT / "proto" / "letskencrypt" / "v1").glob("*.proto"):
        text = proto.read_text()
        assert "package letskencrypt.v1;" in text
        assert text.count("\nservice ") == 1, proto.name
