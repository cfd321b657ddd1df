"""Live progress of an extraction on the driver, and the summary it ends with."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm


@dataclass
class BackboneStats:
    images: int = 0
    seconds: float = 0.0           # wall time of this backbone's extraction, actor start-up included
    startup_seconds: float = 0.0   # until every actor had built its model

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        busy = self.seconds - self.startup_seconds
        return self.images / busy if busy > 0 else 0.0


@dataclass
class ExtractSummary:
    """What one `extract_features` call did. A re-run over a finished store has shards_extracted == 0."""

    units: int = 0                 # (backbone, task, split) units in the plan
    units_skipped: int = 0         # already complete and verified
    shards_extracted: int = 0
    shards_skipped: int = 0        # already present with a matching checksum
    shards_repaired: int = 0       # recorded but missing or corrupt, hence extracted again
    images_skipped: int = 0        # unreadable images left out by this run (--skip-bad-images)
    images_skipped_before: int = 0 # ... recorded in the reused shards of earlier runs
    actor_restarts: int = 0        # shards re-submitted after their actor died
    images: int = 0
    seconds: float = 0.0
    per_backbone: dict[str, BackboneStats] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)   # "backbone|task|split" -> feature key

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        lines = [f"{'backbone':<28} {'images':>9} {'seconds':>9} {'start-up':>9} {'images/s':>9}"]
        for name, s in self.per_backbone.items():
            lines.append(f"{name:<28} {s.images:>9} {s.seconds:>9.1f} {s.startup_seconds:>9.1f} {s.images_per_s:>9.1f}")
        lines.append(
            f"{self.units} units ({self.units_skipped} already complete); shards: {self.shards_extracted} "
            f"extracted, {self.shards_skipped} reused, {self.shards_repaired} repaired, "
            f"{self.actor_restarts} re-submitted after actor loss; {self.images} images in {self.seconds:.1f} s"
        )
        if self.images_skipped or self.images_skipped_before:
            lines.append(f"unreadable images skipped: {self.images_skipped} in this run, "
                         f"{self.images_skipped_before} in reused shards (listed in each unit's _manifest.json)")
        return "\n".join(lines)


class Progress:
    """A tqdm bar over images with units done in its postfix; counts go into an ExtractSummary."""

    def __init__(self, summary: ExtractSummary, total_images: int, total_units: int, enabled: bool = True) -> None:
        self.summary = summary
        self.total_units = total_units
        self.units_done = 0
        self._start = time.perf_counter()
        self.bar = tqdm(total=total_images, unit="img", desc="extract", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"units {self.units_done}/{self.total_units}")

    def unit_done(self) -> None:
        self.units_done += 1
        self._postfix()

    def shard_done(self, backbone: str, images: int, skipped: int = 0) -> None:
        self.summary.shards_extracted += 1
        self.summary.images += images
        self.summary.images_skipped += skipped
        self.summary.per_backbone.setdefault(backbone, BackboneStats()).images += images
        self.bar.update(images)

    def backbone_seconds(self, backbone: str, seconds: float, startup: float) -> None:
        stats = self.summary.per_backbone.setdefault(backbone, BackboneStats())
        stats.seconds += seconds
        stats.startup_seconds += startup

    def close(self) -> ExtractSummary:
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self._start
        return self.summary
