"""``python -m vastrpc``: the command line (see vastrpc.cli)."""

from vastrpc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
