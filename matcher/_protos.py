"""Regenerate matcher/v1 from protos/ (``make protos``); the drift test calls :func:`generate` too."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under protos/ into ``out_dir`` (which mirrors the package layout)."""
    from grpc_tools import protoc  # test/dev dependency only

    import grpc_tools

    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", f"--pyi_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(out_dir.joinpath("matcher", "v1").glob("*_pb2*"))


def main() -> None:
    written = generate(ROOT)
    print("\n".join(str(p.relative_to(ROOT)) for p in written), file=sys.stderr)


if __name__ == "__main__":
    main()
