"""Shared by the tests of `sea`: real data without a download."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.fixture(scope="module")
def digits():
    """Real data, no download: scikit-learn's digits pixels as 64-d features (train / val / test)."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) + 0.5
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.2, random_state=0, stratify=y_tr)
    return (x_tr, y_tr), (x_va, y_va), (x_te, y_te)
