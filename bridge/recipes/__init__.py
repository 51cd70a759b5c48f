"""Recipes: the run-config schema, YAML recipe loading and legacy-config translation.

    from bridge.recipes import load_config
    run = load_config("gpt_pretrain", overrides=["model.attention_backend=local", "train.train_steps=50"])
    run.model.provide()                                   # the megatron-core GPTModel

* :mod:`.schema`: the ConfigStore registration of the run schema (:class:`bridge.training.RunConfig`, re-exported
  here) and of every model preset (``model=<preset>``).
* :mod:`.loading`: :func:`load_config` / :func:`compose_config` through Hydra's compose API over ``conf/``.
* :mod:`.assembly`: :func:`build_run_config`, composed DictConfig -> validated, finalised :class:`RunConfig`.
* :mod:`.moved_keys`: keys that moved (``data.seq_length`` -> ``model.seq_length``) and still work as aliases.
* :mod:`.legacy`: NeMo-1 style YAML -> run config.
* :mod:`.errors`: :class:`ConfigError`, one readable line per problem.
"""

from bridge.recipes.assembly import build_run_config
from bridge.recipes.errors import ConfigError
from bridge.recipes.loading import compose_config, default_config_dir, list_recipes, load_config
from bridge.recipes.schema import register_configs
from bridge.training.config import RunConfig

# Importing bridge.recipes makes the schema and the presets available to an app's own ``@hydra.main`` too.
register_configs()

__all__ = [
    "ConfigError", "RunConfig", "build_run_config", "compose_config", "default_config_dir",
    "list_recipes", "load_config", "register_configs",
]
