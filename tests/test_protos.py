"""Generated code in matcher/v1 must be exactly what protos/ compiles to."""

from pathlib import Path

from matcher._protos import ROOT, generate


def test_generated_code_matches_protos(tmp_path: Path):
    fresh = generate(tmp_path)
    assert fresh, "no .proto compiled"
    committed = sorted(ROOT.joinpath("matcher", "v1").glob("*_pb2*"))
    assert [p.name for p in fresh] == [p.name for p in committed]
    for new in fresh:
        old = ROOT / "matcher" / "v1" / new.name
        assert new.read_bytes() == old.read_bytes(), f"{new.name} drifted from protos/: run `make protos`"
