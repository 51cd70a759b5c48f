"""The two ways a run stops on purpose (``scripts/train.py`` prints either as one line, exit status 1)."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged, locked, or does not fit the run; or a checkpoint folder that
    cannot be used without losing what is in it."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; the run stopped without touching its checkpoints."""
