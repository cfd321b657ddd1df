"""The sweep: cells (backbone, task, method, seed) planned, trained as Ray Tune trials (grid or search),
and logged to MLflow from the driver. The names below are what the rest of seabench may use."""

from orchestrator import lazy_exports

_EXPORTS = {
    "Cell": "cells", "candidate_configs": "cells",
    "expand_backbones": "cells", "plan_cells": "cells",
    "CellOutcome": "trial", "TrialContext": "trial", "head_configs": "trial", "run_cell": "trial",
    "SweepSummary": "driver", "run_sweep": "driver", "trial_context": "driver",
    "SweepTracker": "tracking", "code_version": "tracking",
    "Fingerprint": "fingerprint", "cell_fingerprints": "fingerprint", "changed_parts": "fingerprint",
    "image_identity": "fingerprint",
    "TaskSize": "budget", "feature_dim": "budget", "input_size": "budget", "sweep_budget": "budget",
    "task_size": "budget",
    "estimate_seconds": "calibrate",
    "FinetuneCells": "finetuning",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
