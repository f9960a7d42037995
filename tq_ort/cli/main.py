"""tq-ort command line: builds the parser from one module per subcommand and runs the chosen one.

Adding a subcommand = a module `tq_ort/cli/<name>.py` with `register(subparsers)` (which sets
`fn` on its parser) + its name in `COMMANDS`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# modules of tq_ort.cli, in help order (a module may register a subcommand of another name)
COMMANDS: tuple[str, ...] = ("export", "rewrite", "generate", "inspect", "eval", "calibrate", "trt_build", "check",
                             "serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tq-ort", description="TurboQuant KV-cache compression for ONNX Runtime decoders")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # clear message, no traceback
        print(f"tq-ort {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
