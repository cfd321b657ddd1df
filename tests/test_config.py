"""orchestrator.config: YAML → frozen, validated SweepConfig; overrides; round trip; presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import SweepConfig, apply_override, load_config
from orchestrator.errors import OrchestratorError
from orchestrator.sweep.cells import axis_values, candidate_configs
from sea.methods import PROTOCOL_GRID, get_method, method_names

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "t", "backbones": ["random:resnet10t@32"], "tasks": ["digits"]}


def test_minimal_config_gets_protocol_defaults() -> None:
    cfg = load_config(data=MINIMAL)
    assert cfg.mode == "select" and cfg.search.algorithm == "grid"
    assert cfg.tracking_uri == "sqlite:///mlflow.db"
    assert cfg.trainer.epochs == 100 and cfg.trainer.batch_size == 256
    assert cfg.seeds == (0, 1, 2)
    assert cfg.report_dir == Path("reports") / "t"


def test_config_is_frozen_and_hashable() -> None:
    cfg = load_config(data=MINIMAL)
    with pytest.raises(AttributeError):
        cfg.name = "other"  # type: ignore[misc]
    assert hash(cfg) == hash(load_config(data=MINIMAL))


@pytest.mark.parametrize("preset", ["paper.yaml", "demo.yaml"])
def test_presets_load_and_round_trip(preset: str) -> None:
    cfg = load_config(REPO / "configs" / preset)
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg


def test_round_trip_with_every_section_set() -> None:
    data = {**MINIMAL, "optional_tasks": ["fashion-mnist"], "methods": ["linear", "sea", "mixup", "logreg"],
            "seeds": [3], "address": "auto", "mode": "reference", "num_cpus": 2,
            "search": {"algorithm": "optuna", "num_samples": 4, "asha": True, "max_concurrent": 2},
            "grid": {"lr": [0.8], "sea": {"eta": [0.2, 0.4]}, "mixup": {"eta": [1.0]}},
            "trainer": {"epochs": 3, "schedule": "cosine"}, "extraction": {"dtype": "float32"},
            "resources": {"cpu": 0.5, "gpu": 0.25}, "report": {"out": "r", "reference_csv": "ref.csv"}}
    cfg = load_config(data=data)
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["grid"] == {"lr": [0.8], "mixup": {"eta": [1.0]}, "sea": {"eta": [0.2, 0.4]}}


def test_paper_preset_is_the_protocol() -> None:
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert len(cfg.tasks) == 11 and cfg.seeds == (0, 1, 2) and cfg.trainer.epochs == 100
    assert set(cfg.methods) == set(method_names())
    assert len(candidate_configs(cfg, "linear")) == 4 * 3 * 3
    assert len(candidate_configs(cfg, "sea")) == 36 * 4 * 3


def test_set_overrides_are_yaml_parsed() -> None:
    cfg = load_config(data=MINIMAL, overrides=["trainer.epochs=5", "seeds=[0, 1]", "search.asha=true",
                                               "grid.sea.eta=[0.2]", "resources.gpu=0.5"])
    assert cfg.trainer.epochs == 5 and cfg.seeds == (0, 1) and cfg.search.asha is True
    assert axis_values(cfg, "sea", "eta") == (0.2,) and cfg.resources.gpu == 0.5


def test_common_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nbackbones: [a]\ntasks: [digits]\nstore: s1\n")
    cfg = load_config(path, store="s3://b/f", tracking_uri="http://127.0.0.1:5000", address="auto", out="o")
    assert (cfg.store, cfg.tracking_uri, cfg.address, cfg.report.out) == (
        "s3://b/f", "http://127.0.0.1:5000", "auto", "o")


def test_scientific_notation_without_dot_is_a_number() -> None:
    # PyYAML reads `1e-6` as a string; float keys accept it anyway
    cfg = load_config(data={**MINIMAL, "grid": {"weight_decay": ["1e-6", 1.0e-5]}})
    assert axis_values(cfg, "linear", "weight_decay") == (1e-6, 1e-5)


@pytest.mark.parametrize(("data", "message"), [
    ({**MINIMAL, "trainr": {}}, "unknown key 'trainr'; did you mean 'trainer'"),
    ({**MINIMAL, "trainer": {"epoch": 3}}, "unknown key 'trainer.epoch'; did you mean 'epochs'"),
    ({**MINIMAL, "trainer": {"epochs": "ten"}}, "'trainer.epochs' expects an integer"),
    ({**MINIMAL, "trainer": {"epochs": 0}}, "'trainer.epochs' must be ≥ 1"),
    ({**MINIMAL, "trainer": {"checkpoint_every": -1}}, "'trainer.checkpoint_every' must be ≥ 0"),
    ({**MINIMAL, "mode": "selct"}, "must be one of select, reference; got 'selct' (did you mean 'select'?)"),
    ({**MINIMAL, "search": {"algorithm": "bayes"}}, "'search.algorithm' must be one of grid, random, optuna"),
    ({**MINIMAL, "methods": ["sae"]}, "did you mean 'sea'"),
    ({**MINIMAL, "grid": {"sea": {"etaa": [1]}}}, "unknown key 'grid.sea.etaa'; did you mean 'eta'"),
    ({**MINIMAL, "grid": {"linear": {"eta": [1]}}}, "unknown key 'grid.linear.eta'"),
    ({**MINIMAL, "grid": {"lr": []}}, "'grid.lr' needs at least one value"),
    ({**MINIMAL, "grid": {"lr": ["fast"]}}, "'grid.lr[0]' expects a number"),
    ({**MINIMAL, "search": {"asha": "yes"}}, "'search.asha' expects true or false"),
    ({**MINIMAL, "seeds": [0, 0]}, "'seeds' lists a value twice"),
    ({**MINIMAL, "resources": 4}, "'resources' expects a mapping"),
    ({"backbones": ["a"], "tasks": ["digits"]}, "required key 'name' is missing"),
    ({**MINIMAL, "tasks": []}, "needs at least one task"),
    ({**MINIMAL, "protocol": {"select_on": "best"}}, "'protocol.select_on' must be one of last, last_k"),
    ({**MINIMAL, "protocol": {"k": 200}}, "'protocol.k'=200 is more than trainer.epochs=100"),
    ({**MINIMAL, "protocol": {"refits": 0}}, "'protocol.refits' must be ≥ 1"),
])
def test_bad_values_name_the_key_and_the_fix(data: dict, message: str) -> None:
    with pytest.raises(OrchestratorError) as err:
        load_config(data=data)
    assert message in str(err.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(OrchestratorError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(OrchestratorError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad.write_text("name: t\nbackbones: [a]\ntasks: [digits]\nmode: x\n")
    with pytest.raises(OrchestratorError, match=r"bad\.yaml: config: 'mode'"):
        load_config(bad)


def test_override_syntax_errors() -> None:
    with pytest.raises(OrchestratorError, match=r"expected key\.sub=value"):
        apply_override({}, "trainer.epochs")
    with pytest.raises(OrchestratorError, match="'name' is not a mapping"):
        apply_override({"name": "x"}, "name.sub=1")


def test_baseline_gets_exactly_the_optimisation_grid_sea_gets() -> None:
    cfg = load_config(data={**MINIMAL, "grid": {"lr": [0.8, 1.6], "eta": [0.2]}})
    for axis in ("lr", "weight_decay", "lamda"):
        values = {axis_values(cfg, m, axis) for m in ("linear", "sea", "fgsm", "noise", "mixup")}
        assert len(values) == 1
    linear = {tuple(sorted(c.items())) for c in candidate_configs(cfg, "linear")}
    sea_opt = {tuple(sorted((k, v) for k, v in c.items() if k in get_method("linear").axes))
               for c in candidate_configs(cfg, "sea")}
    assert linear == sea_opt


def test_shared_eta_override_does_not_reach_mixups_beta_concentration() -> None:
    cfg = load_config(data={**MINIMAL, "grid": {"eta": [0.3]}})
    assert axis_values(cfg, "sea", "eta") == (0.3,)
    assert axis_values(cfg, "mixup", "eta") != (0.3,)
    assert axis_values(load_config(data={**MINIMAL, "grid": {"mixup": {"eta": [0.3]}}}), "mixup", "eta") == (0.3,)


def test_protocol_defaults_match_the_benchmark_protocol() -> None:
    assert PROTOCOL_GRID["lr"] == (0.4, 0.8, 1.6, 3.2)
    assert PROTOCOL_GRID["weight_decay"] == (1e-6, 1e-5, 1e-4)
    assert PROTOCOL_GRID["lamda"] == (0.05, 0.1, 0.2)
    assert PROTOCOL_GRID["eta"] == (0.1, 0.2, 0.4, 0.8) and PROTOCOL_GRID["alpha"] == (0.01, 0.05, 0.1)
    # the random streams of sea.augment's documentation: SeedSequence([seed, stream]), noise 3 and mixup 4
    assert {m: get_method(m).stream for m in method_names()} == {
        "linear": 0, "sea": 1, "fgsm": 2, "noise": 3, "mixup": 4, "logreg": 5, "finetune": 6}
    assert method_names("head") == ("linear", "sea", "fgsm", "noise", "mixup")   # the report's order too


def test_plugins_are_imported_before_the_methods_are_checked_and_a_missing_one_is_named(tmp_path, monkeypatch) -> None:
    plugin = tmp_path / "extras" / "my_head.py"
    plugin.parent.mkdir()
    plugin.write_text("from sea.methods import OPTIMISATION_AXES, Method, register_method\n"
                      "register_method(Method('myhead', 200, OPTIMISATION_AXES), replace=True)\n")
    monkeypatch.chdir(tmp_path)
    try:
        cfg = load_config(data={**MINIMAL, "methods": ["myhead"], "plugins": ["extras/my_head.py"],
                                "grid": {"myhead": {"lr": [0.5]}}})
        assert cfg.plugins == (str(plugin),)            # made absolute: a Ray worker elsewhere finds it too
        assert axis_values(cfg, "myhead", "lr") == (0.5,)
    finally:
        from sea.methods import unregister_method

        unregister_method("myhead")
    with pytest.raises(OrchestratorError, match=r"config: 'plugins': plugin 'no_such\.module' cannot be imported"):
        load_config(data={**MINIMAL, "plugins": ["no_such.module"]})
    with pytest.raises(OrchestratorError, match="methods"):
        load_config(data={**MINIMAL, "methods": ["myhead"]})      # unregistered again: refused, with the choices
