"""``python -m seqmodel.cli``: the same command line as ``seqmodel``."""

from seqmodel.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
