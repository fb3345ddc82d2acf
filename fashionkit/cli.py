"""The command line: ``fashionkit <stage> <command>``, and ``classify``/``metric``/``detect`` as short forms.

Each stage registers its own commands (``<stage>/cli.py``: ``register(subparsers)``); heavy imports such as
torch happen inside the command functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fashionkit import __version__, interrupt
from fashionkit.errors import UserError

STAGE_MODULES = {
    "data": ("fashionkit.data.cli", "Fashion-MNIST: exploration, augmentation presets, outliers"),
    "classify": ("fashionkit.classify.cli", "train, evaluate and use image classifiers"),
    "metric": ("fashionkit.metric.cli", "triplet embeddings, FAISS look-ups and the ambiguity resolver"),
    "detect": ("fashionkit.detect.cli", "YOLO detection of fashion items in images and video"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=110)


def _available_stages() -> dict[str, object]:
    # A stage is listed once its package exists; a missing dependency still raises.
    stages = {}
    for stage, (module_name, _) in STAGE_MODULES.items():
        try:
            stages[stage] = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not module_name.startswith(e.name or "?"):
                raise
    return stages


def add_stage_commands(parser: argparse.ArgumentParser, module: object) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module.register(sub, HelpFormatter)


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    stages = _available_stages()
    if stage is not None:
        parser = argparse.ArgumentParser(prog=stage, description=STAGE_MODULES[stage][1],
                                         formatter_class=HelpFormatter)
        add_stage_commands(parser, stages[stage])
        return parser
    parser = argparse.ArgumentParser(
        prog="fashionkit", formatter_class=HelpFormatter,
        description="Fashion-MNIST toolkit: data -> classify -> metric -> detect. "
                    "Each stage reads the previous stage's run directory.")
    parser.add_argument("--version", action="version", version=f"fashionkit {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, module in stages.items():
        stage_parser = sub.add_parser(name, help=STAGE_MODULES[name][1], description=STAGE_MODULES[name][1],
                                      formatter_class=HelpFormatter)
        add_stage_commands(stage_parser, module)
    add_serve_command(sub)
    return parser


def add_serve_command(sub) -> None:
    """``fashionkit serve``: one command, not a stage (it reads every stage's runs)."""
    from fashionkit.serve import cli as serve_cli  # light: fastapi is imported when the command runs

    p = sub.add_parser("serve", help="a local web page over the runs: ambiguous items, look-ups, video results",
                       description=serve_cli.DESCRIPTION, formatter_class=HelpFormatter)
    serve_cli.add_arguments(p)


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        with interrupt.installed():
            result = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


def _stage_main(stage: str) -> int:
    if stage not in _available_stages():
        print(f"error: the {stage} stage is not part of this fashionkit build yet", file=sys.stderr)
        return 2
    return run(build_parser(stage), None)


def classify_main() -> int:
    return _stage_main("classify")


def metric_main() -> int:
    return _stage_main("metric")


def detect_main() -> int:
    return _stage_main("detect")
