"""Which backend runs an attention layer: explicit choices are checked, ``auto`` picks the fastest that fits.

Transformer Engine's environment switches are honoured so that habits carry over:
``NVTE_FLASH_ATTN=0``, ``NVTE_FUSED_ATTN=0`` and ``NVTE_UNFUSED_ATTN=0`` take flash, fused or local out of
``auto``'s choice, and make an explicit request for that backend an error (never a silent switch).
``NVTE_DEBUG=1`` with ``NVTE_DEBUG_LEVEL=1`` logs, per layer, the backend that runs and why the others were
ruled out; ``NVTE_DEBUG_LEVEL=2`` adds the inputs the decision was made on.

Where the decision is made: each attention layer holds a :class:`LayerBackend` (its request, built from the
layer spec) that decides once per input signature (:class:`AttentionInputs`) through :func:`select_backend`
and keeps the result. When the model is built, :meth:`LayerBackend.check_request` runs the same decision on
what is known before any tensor exists, so an explicit backend that cannot run here fails in ``provide()``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Dict, Iterable, Optional, Tuple, Union

from bridge.attention import flash, fused, local, measured
from bridge.attention.inputs import AttentionInputs
from bridge.attention.backend import AttnBackend

logger = logging.getLogger("bridge.attention")

# auto's order when nothing was measured for the inputs (measured.auto_order reorders flash and fused by the
# committed benchmark); auto takes the first backend that supports the layer.
AUTO_ORDER: Tuple[AttnBackend, ...] = (AttnBackend.flash, AttnBackend.fused, AttnBackend.local)

ENV_SWITCHES: Dict[AttnBackend, str] = {
    AttnBackend.flash: "NVTE_FLASH_ATTN",
    AttnBackend.fused: "NVTE_FUSED_ATTN",
    AttnBackend.local: "NVTE_UNFUSED_ATTN",
}

_CHECKS: Dict[AttnBackend, Callable[[AttentionInputs], Optional[str]]] = {
    AttnBackend.flash: flash.unsupported_reason,
    AttnBackend.fused: fused.unsupported_reason,
    AttnBackend.local: local.unsupported_reason,
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested attention backend cannot run the layer it was asked for."""


def canonical(backend: AttnBackend) -> AttnBackend:
    """megatron-core's ``unfused`` is our ``local``."""
    return AttnBackend.local if backend == AttnBackend.unfused else backend


def env_disabled_reason(backend: AttnBackend) -> Optional[str]:
    """Why the environment disables ``backend``, or None."""
    var = ENV_SWITCHES[canonical(backend)]
    if os.environ.get(var, "1").strip() == "0":
        return f"disabled by {var}=0"
    return None


def ruled_out_reason(backend: AttnBackend, inputs: AttentionInputs) -> Optional[str]:
    """Why ``backend`` cannot run ``inputs`` (environment first, then the backend's own checks), or None."""
    backend = canonical(backend)
    return env_disabled_reason(backend) or _CHECKS[backend](inputs)


def debug_level() -> int:
    """0 unless NVTE_DEBUG=1; then NVTE_DEBUG_LEVEL (default 1)."""
    if os.environ.get("NVTE_DEBUG", "0").strip() != "1":
        return 0
    try:
        return max(1, int(os.environ.get("NVTE_DEBUG_LEVEL", "1")))
    except ValueError:
        return 1


def _ensure_debug_handler() -> None:
    """Make the debug lines visible: through the application's logging if it has any (this logger's or an
    ancestor's, e.g. the ``bridge`` logger of scripts/train.py), else on stderr; never both."""
    logger.setLevel(logging.DEBUG)
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[bridge.attention] %(message)s"))
    logger.addHandler(handler)


def select_backend(
    requested: AttnBackend,
    inputs: AttentionInputs,
    layer: str = "attention",
    exclude: Iterable[AttnBackend] = (),
    log: Union[bool, Callable[[AttnBackend], bool]] = True,
) -> AttnBackend:
    """Return the backend that runs ``inputs``; raise :class:`BackendUnavailableError` for an impossible explicit one.

    ``exclude`` removes backends from ``auto``'s choice (the legacy ``use_flash_attention=False``);
    ``log=False`` keeps build-time checks out of the NVTE_DEBUG log, which reports what layers run; a callable
    ``log`` is asked with the chosen backend whether this decision is worth a line.
    """
    requested = canonical(requested)
    excluded = {canonical(b) for b in exclude}
    if requested != AttnBackend.auto:
        reason = ruled_out_reason(requested, inputs)
        if reason is not None:
            raise BackendUnavailableError(
                f"attention_backend={requested.value} cannot run {layer}: {reason} "
                f"({inputs.describe()}); choose another backend or auto"
            )
        chosen, reasons, why = requested, {}, ""
    else:
        chosen, reasons = None, {}
        order, why = measured.auto_order(inputs, AUTO_ORDER)
        for candidate in order:
            reason = "excluded by use_flash_attention=False" if candidate in excluded else ruled_out_reason(candidate, inputs)
            if reason is None:
                chosen = candidate
                break
            reasons[candidate] = reason
        if chosen is None:
            detail = "; ".join(f"{b.value}: {r}" for b, r in reasons.items())
            raise BackendUnavailableError(f"no attention backend can run {layer}: {detail}")
    level = debug_level() if (log(chosen) if callable(log) else log) else 0
    if level:
        _ensure_debug_handler()
        how = "auto" if requested == AttnBackend.auto else "requested"
        ruled_out = "; ".join(f"{b.value} ruled out: {r}" for b, r in reasons.items())
        message = f"{layer}: running {chosen.value} ({how})" + (f"; {why}" if why else "")
        message += f"; {ruled_out}" if ruled_out else ""
        if level >= 2:
            message += f" [inputs: {inputs.describe()}]"
        logger.info(message)
    return chosen


class LayerBackend:
    """One attention layer's backend: the request from its spec, and the decision for each input signature.

    ``requested`` may be ``auto``; ``exclude`` takes backends out of auto's choice (legacy
    ``use_flash_attention=False``); ``layer`` names the layer in errors and debug logs.
    """

    def __init__(self, requested: AttnBackend, exclude: Iterable[AttnBackend] = (), layer: str = "attention"):
        self.requested = canonical(requested)
        self.exclude: Tuple[AttnBackend, ...] = tuple(canonical(b) for b in exclude)
        self.layer = layer
        self._decided: Dict[AttentionInputs, AttnBackend] = {}
        self._logged: Optional[AttnBackend] = None  # the decision last written to the NVTE_DEBUG log
        self.last: Optional[AttnBackend] = None
        """What the latest :meth:`choose` returned (for logs, tests and ``TrainResult.attention_backends``)."""

    def choose(self, inputs: AttentionInputs) -> AttnBackend:
        """The backend for ``inputs``: decided (and logged under NVTE_DEBUG) the first time, kept after."""
        chosen = self._decided.get(inputs)
        if chosen is None:
            # NVTE_DEBUG: a line when the layer's backend changes, not for every new input shape
            chosen = self._decided[inputs] = select_backend(self.requested, inputs, self.layer, self.exclude,
                                                            log=lambda backend: backend is not self._logged)
            self._logged = chosen
        self.last = chosen
        return chosen

    def choose_with_bias(self) -> AttnBackend:
        """An additive attention bias (T5's relative position bias) runs on ``local``, the one backend that adds
        it; an explicit other backend is an error."""
        if self.requested not in (AttnBackend.auto, AttnBackend.local):
            raise ValueError(
                f"{self.layer}: attention_backend={self.requested.value} cannot add an attention bias "
                "(position_embedding_type=relative); use attention_backend=local or auto")
        self.last = AttnBackend.local
        return self.last

    def check_request(self, inputs: AttentionInputs, where: str) -> None:
        """Raise :class:`BackendUnavailableError` now if an explicit request cannot run ``inputs`` (the signature
        known at build time: device, dtype, heads, head dim, dropout); ``auto`` waits for the real inputs."""
        if self.requested != AttnBackend.auto:
            select_backend(self.requested, inputs, where, self.exclude, log=False)
