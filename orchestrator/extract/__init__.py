"""Extraction: (backbone, task, stored split) units planned, cut into shards, run by Ray actors and
stored as Parquet with a manifest per unit. The names below are what the rest of seabench may use."""

from orchestrator import lazy_exports

_EXPORTS = {
    "ActorSettings": "extraction", "DEFAULT_DATA_ROOT": "extraction", "DEFAULT_STORE": "extraction",
    "extract_features": "extraction", "preflight_inputs": "extraction",
    "UnitCache": "cache",
    "ENSEMBLE_PREFIX": "plan", "Unit": "plan", "backbone_parts": "plan", "compute_of": "plan", "extraction_code": "plan", "feature_key": "plan",
    "plan_units": "plan",
    "DTYPES": "manifest", "MANIFEST": "manifest", "FeatureKey": "manifest", "Manifest": "manifest",
    "ShardRecord": "manifest",
    "FeatureStore": "store", "StoredUnit": "store",
    "ShardExtractor": "actor",
    "ExtractSummary": "progress",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
