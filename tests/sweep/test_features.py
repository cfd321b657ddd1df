"""orchestrator.sweep.features: what a trial reads — stored splits by exact key, ensembles' parts."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.extract import FeatureStore
from orchestrator.sweep.features import load_features, unit_id
from orchestrator.sweep.trial import store_loader


def test_ensemble_concatenates_unit_normalised_parts(store: str) -> None:
    load = store_loader(store)
    x, y, key, skipped = load_features(load, "ensemble:bb+cc", "digits", "train")
    _, yb, kb, _ = load("bb", "digits", "train")
    assert len(skipped) == 0
    assert x.shape == (120, 16 + 8) and np.array_equal(y, yb) and key.split(",")[0] == kb
    np.testing.assert_allclose(np.linalg.norm(x[:, :16], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x[:, 16:], axis=1), 1.0, rtol=1e-5)


def test_units_are_read_by_the_exact_key_given_not_the_moving_pointer(store: str) -> None:
    key = FeatureStore(store).key_for("bb", "digits", "train")
    assert store_loader(store, {unit_id("bb", "digits", "train"): key})("bb", "digits", "train").key == key
    missing = {unit_id("bb", "digits", "train"): "0" * 24}
    with pytest.raises(OrchestratorError, match=r"feature key '0+' of bb / digits / train is not in store"):
        store_loader(store, missing)("bb", "digits", "train")
