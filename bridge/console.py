"""What the command-line scripts hide from their output: notices about optional libraries bridge does not use.

megatron-core warns at import time that Transformer Engine and Apex are absent (bridge builds megatron-core's
local layers and optimizers on purpose) and that a CUDA-graph default it sets itself is deprecated;
torch.distributed.checkpoint warns about deprecated APIs that megatron-core's loader calls. None of them is
something a user of ``scripts/train.py`` or ``scripts/generate.py`` can act on, and together they bury the
output. Library users (``import bridge``) keep every warning: only the scripts call :func:`quiet_scripts`.
"""

from __future__ import annotations

import warnings

_NOTICES = ("Transformer Engine and Apex are not installed", "Apex is not installed", "full scope is deprecated")


def quiet_scripts() -> None:
    """Filter the notices above; call before importing megatron-core."""
    for message in _NOTICES:
        warnings.filterwarnings("ignore", message=f".*{message}")
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"(torch\.distributed\.checkpoint|megatron\.core)")
