"""Command line of ``scripts/train.py``: Hydra's ``--config-name`` / ``--config-dir`` plus ``key=value`` overrides.

Hydra's own ``@hydra.main`` would print multi-line errors and change the working directory; bridge composes
with the compose API instead (:func:`bridge.recipes.compose_config`), so the same overrides work from
Python, and errors are one line.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from bridge.models import list_presets
from bridge.recipes.loading import list_recipes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/train.py",
        description="Train a GPT or T5 model from a Hydra recipe (launch with torchrun for several processes).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"recipes: {', '.join(list_recipes())}\n"
            f"model presets (model=<name>): {', '.join(list_presets())}\n\n"
            "examples:\n"
            "  torchrun --nproc-per-node=1 scripts/train.py --config-name gpt_pretrain train.train_steps=100\n"
            "  torchrun --nproc-per-node=2 scripts/train.py --config-name t5_pretrain model.attention_backend=local\n"
            "  python scripts/train.py --nproc-per-node=2 --config-name t5_pretrain   # the same, one-line errors\n"
            "  python scripts/train.py --config-name gpt_pretrain model=gpt_126m --cfg   # print the run, do not train"
        ),
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="Hydra overrides: model=gpt_126m, model.attention_backend=flash, train.train_steps=50, ...")
    parser.add_argument("--config-name", "-cn", default="gpt_pretrain",
                        help="recipe to run: a YAML under conf/ without .yaml (default: gpt_pretrain)")
    parser.add_argument("--config-dir", "-cd", default=None,
                        help="extra folder of recipes, searched before bridge's conf/")
    parser.add_argument("--cfg", action="store_true",
                        help="print the validated run config as YAML and exit without training")
    parser.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                        help="launcher mode: check the recipe, then start N processes (as torchrun does); errors "
                             "stay one line with their exit status")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed command line; a usage error exits with status 2 (argparse's convention)."""
    args = build_parser().parse_args(argv)
    args.overrides = list(args.overrides)
    return args


def run_to_yaml(run) -> str:
    """A built :class:`bridge.recipes.RunConfig` as YAML (what ``--cfg`` prints)."""
    from omegaconf import OmegaConf

    from bridge.training.snapshot import to_plain

    # Plain data first: provider fields may hold a function or a torch.dtype (activation_func, params_dtype).
    return OmegaConf.to_yaml(OmegaConf.create(to_plain(run)))
