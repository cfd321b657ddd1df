"""Fine-tuning as a method of the sweep: the backbone + a linear head trained on images with Ray Train,
candidates selected by Ray Tune, under the same protocol as the feature-based methods. The names below are
what the rest of seabench may use."""

from orchestrator import lazy_exports

_EXPORTS = {
    "RECIPES": "recipe", "BackboneRecipe": "recipe", "Recipe": "recipe", "backbone_recipe": "recipe",
    "build_optimizer": "optim", "training_loss": "optim",
    "FinetuneNet": "net", "build_net": "net", "train_in_process": "loop", "train_loop_per_worker": "loop",
    "build_phase": "images",
    "finetune_cell": "trainer", "run_training": "trainer", "scaling_config": "trainer",
    "checkpoint_storage": "storage", "release": "storage", "run_folders": "storage", "run_name": "storage",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
