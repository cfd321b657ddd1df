"""The network a fine-tuning run trains: the backbone with the weights its features came from, and a linear head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FinetuneNet(nn.Module):
    """The backbone's feature (the one that was extracted: pooled pre-logits or CLS) + a linear head."""

    def __init__(self, backbone: nn.Module, feature: str, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.feature, self.head = backbone, feature, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from tasks.backbones import FEATURES

        return self.head(FEATURES[self.feature](self.backbone, images))


def build_net(backbone_name: str, num_classes: int, seed: int, drop_path: float = 0.0) -> tuple[FinetuneNet, Any]:
    """The backbone with the weights the features came from (built with timm's `drop_path_rate` when
    `drop_path` > 0), its ImageNet classifier removed, and a linear head initialised from `seed`; returns
    (net, tasks.Backbone)."""
    from dataclasses import replace

    from tasks import build_backbone, get_backbone

    spec = get_backbone(backbone_name)
    if drop_path > 0:   # stochastic depth has no weights: the same checkpoint loads
        spec = replace(spec, model_kwargs=(*spec.model_kwargs, ("drop_path_rate", float(drop_path))))
    backbone = build_backbone(spec)
    model = backbone.model
    if hasattr(model, "reset_classifier"):   # the pre-logits feature never reaches the old classifier
        model.reset_classifier(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(backbone.feature_dim, num_classes)
    return FinetuneNet(model.train(), backbone.spec.feature, head), backbone
