"""Compose a recipe with Hydra's compose API: the same path for ``scripts/train.py`` and for Python users.

    from bridge.recipes import load_config
    run = load_config("gpt_pretrain", overrides=["model=gpt_126m", "train.train_steps=100"])

Recipes are looked up in ``conf/`` next to the package (or ``$BRIDGE_CONFIG_DIR``); a ``config_dir`` of
your own is searched first, with bridge's ``conf/`` behind it, so your recipes can build on ``base`` and
the model presets.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bridge.recipes.assembly import build_run_config
from bridge.recipes.errors import ConfigError, config_error, did_you_mean
from bridge.recipes.moved_keys import rewrite_moved_overrides
from bridge.recipes.schema import register_configs
from bridge.training.config import RunConfig

PACKAGE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
"""bridge's own recipes (``conf/`` at the repository root)."""


def default_config_dir() -> Path:
    """``$BRIDGE_CONFIG_DIR`` if set, else bridge's ``conf/``."""
    return Path(os.environ.get("BRIDGE_CONFIG_DIR") or PACKAGE_CONFIG_DIR).resolve()


def list_recipes(config_dir: Optional[os.PathLike] = None) -> List[str]:
    """Names usable as ``--config-name``: YAML files under the config folder, outside config groups."""
    root = Path(config_dir or default_config_dir())
    names = []
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root).with_suffix("").as_posix()
        if not rel.startswith("model/"):
            names.append(rel)
    return names


def _search_path(config_name: str, config_dir: Optional[os.PathLike]) -> Tuple[Path, List[str]]:
    """(primary folder, overrides adding the other folder to Hydra's search path).

    Hydra looks up the primary config only in the primary folder, but group choices and defaults in
    the whole search path: a recipe of the user's is primary with bridge's ``conf/`` behind it, a recipe
    of bridge's is primary with the user's folder (their ``model/*.yaml``) searched too.
    """
    package = default_config_dir()
    if config_dir is None:
        return package, []
    user = Path(config_dir).resolve()
    if not user.is_dir():
        raise ConfigError(f"config folder {str(user)!r} does not exist")
    if user == package:
        return package, []
    if (user / f"{config_name}.yaml").is_file():
        return user, [f"hydra.searchpath=[file://{package}]"]
    return package, [f"hydra.searchpath=[file://{user}]"]


@contextlib.contextmanager
def _set_aside_outer_hydra():
    """Let composition work inside an app that already initialised Hydra (``@hydra.main``), and put its
    state back afterwards: Hydra keeps one global instance and refuses a second initialisation."""
    global_hydra = GlobalHydra.instance()
    outer = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        yield
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def compose_config(
    config_name: str, overrides: Sequence[str] = (), config_dir: Optional[os.PathLike] = None
) -> DictConfig:
    """The composed recipe (struct mode) with ``overrides`` applied (a moved key such as ``data.seq_length``
    sets its new owner, see :mod:`bridge.recipes.moved_keys`).

    Any problem (unknown key, bad value, missing recipe or preset) is a one-line :class:`ConfigError`.
    """
    primary, search_path = _search_path(config_name, config_dir)
    try:
        overrides = rewrite_moved_overrides(overrides)
    except (HydraException, ValueError) as exc:
        raise config_error(exc) from exc
    register_configs()
    with _set_aside_outer_hydra(), initialize_config_dir(config_dir=str(primary), version_base=None, job_name="bridge"):
        try:
            cfg = compose(config_name=config_name, overrides=overrides + search_path)
        except MissingConfigException as exc:
            if exc.missing_cfg_file == config_name or not exc.options and "primary config" in str(exc):
                recipes = sorted(set(list_recipes(primary)) | set(list_recipes(config_dir) if config_dir else []))
                raise ConfigError(
                    f"no recipe named {config_name!r}{did_you_mean(config_name, recipes)} "
                    f"(recipes: {', '.join(recipes)})") from exc
            raise config_error(exc) from exc
        except (HydraException, OmegaConfBaseException) as exc:
            raise config_error(exc) from exc
    return cfg


def load_config(
    config_name: str, overrides: Sequence[str] = (), config_dir: Optional[os.PathLike] = None
) -> RunConfig:
    """Compose recipe ``config_name`` with Hydra overrides and build the validated :class:`RunConfig`."""
    return build_run_config(compose_config(config_name, overrides, config_dir))
