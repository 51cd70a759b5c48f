"""Hydra's ConfigStore registration: the run schema and every model preset.

A recipe YAML (``conf/*.yaml``) names the schema in its defaults list (through ``conf/base.yaml``) and
supplies values; Hydra composes it in struct mode, so a key the schema does not have is an error. The schema
is :class:`bridge.training.RunConfig` (it lives beside its component configs). The ``model`` node is one of
the model presets (``model=gpt_126m``), each stored here from ``bridge.models.presets`` as a structured config
of its provider class, so the presets have one source of truth and the provider's field names are the schema
of ``model.*``.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from bridge.models import presets as model_presets
from bridge.training.config import RunConfig

SCHEMA_NAME = "run_config"
"""Name of :class:`RunConfig` in the ConfigStore (``defaults: [run_config, ...]`` in ``conf/base.yaml``)."""


def register_configs() -> None:
    """Store the run schema and every model preset in Hydra's ConfigStore.

    Called before each composition, so presets added with ``bridge.models.register_preset`` after import
    are available as ``model=<name>`` too (storing again replaces the previous entry).
    """
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=RunConfig)
    for name in model_presets.list_presets():
        entry = model_presets.preset(name)
        # The class defaults plus the preset's own fields, not a validated instance: validation fills in
        # derived fields (T5's per-stack backends), which would then no longer follow later overrides.
        node = OmegaConf.merge(OmegaConf.structured(entry.provider_cls), entry.fields)
        store.store(group="model", name=name, node=node)
