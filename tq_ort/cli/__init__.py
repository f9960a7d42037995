"""tq-ort command line (layer 5): one module per subcommand, each registering its own parser.

`tq_ort.cli.main` builds the top parser from `COMMANDS` (module names in help order); every
module there has `register(subparsers) -> argparse.ArgumentParser` that adds its subcommand and
sets `fn`, the function that runs it. `tq_ort.cli.codec_flags` holds the compression flags shared
by export, rewrite and eval. Subcommand modules import only codec_flags and layers 3-4, never each
other. This file imports nothing, so importing one submodule does not pull in the others.
"""
