"""The Gradio app: ``python app.py [--model DIR] [--port N] [--share]``.

The same launcher as ``python -m allstudy serve`` (see allstudy/serving/app.py); it binds 127.0.0.1, opens a
public link only with ``--share``, and uses outputs/models/chosen/ unless ``--model`` says otherwise.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``allstudy serve`` with these arguments; return the exit status."""
    from allstudy.cli import main as cli

    return cli(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
