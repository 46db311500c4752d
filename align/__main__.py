"""`python -m align ...`: the `align` command, for environments where the console script is not on PATH
(`pip install --user`, a `--target` install, a venv that is not activated)."""
import sys

from align.cli import main

if __name__ == "__main__":
    sys.exit(main())
