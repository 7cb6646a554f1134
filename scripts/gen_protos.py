"""Regenerate the protobuf and gRPC stubs in vastrpc/api/v1 from protos/ (``--check`` only compares)."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("vastrpc") / "api" / "v1"
INIT = '"""Generated protobuf and gRPC stubs for vastrpc.api.v1 (do not edit; run scripts/gen_protos.py)."""\n'


def generate(out: Path) -> list[Path]:
    """Generate the stubs under ``out`` and return the files written, relative to it."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / PACKAGE / "__init__.py").write_text(INIT)
    return sorted(p.relative_to(out) for p in (out / PACKAGE).iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ from fresh ones")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        target = ROOT / PACKAGE
        existing = sorted(p.relative_to(ROOT) for p in target.iterdir() if p.is_file()) if target.exists() else []
        if opts.check:
            stale = [
                str(f)
                for f in files
                if not (ROOT / f).exists() or not filecmp.cmp(Path(tmp) / f, ROOT / f, shallow=False)
            ]
            stale += [str(f) for f in existing if f not in files]
            if stale:
                print(
                    "generated stubs are stale; run: python scripts/gen_protos.py\n  " + "\n  ".join(stale),
                    file=sys.stderr,
                )
                return 1
            print(f"stubs up to date ({len(files)} files)")
            return 0
        for f in existing:
            (ROOT / f).unlink()
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(Path(tmp) / f, ROOT / f)
        print(f"wrote {len(files)} files to {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
