"""A toy augmentation added from outside `sea`, as docs/extending.md says: one function plus one entry.

Coordinate dropout: x̃ = normalise(x ⊙ m) with m ~ Bernoulli(1 − η) per coordinate, drawn from each head's
own torch generator (its stream, 100, is declared with it). Loaded as a plugin (`plugins:` in a config,
`seabench fit --plugin`), by the driver and by every Ray worker that trains it.
"""

from __future__ import annotations

import torch

from sea.augment import Augmented, StepContext
from sea.direction import normalise
from sea.methods import OPTIMISATION_AXES, Method, register_method


def dropout_step(ctx: StepContext, heads: slice) -> Augmented:
    b, d = ctx.x.shape
    draws = torch.stack([torch.rand(b, d, generator=r.noise, dtype=ctx.x.dtype, device=ctx.x.device)
                         for r in ctx.random[heads]])
    return Augmented(features=normalise(ctx.x * (draws >= ctx.eta[heads])))


register_method(Method("dropout", stream=100, axes=(*OPTIMISATION_AXES, "eta"), augment=dropout_step,
                       eta_is_step=True, grid={"eta": (0.1, 0.3)}), replace=True)
