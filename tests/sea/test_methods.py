"""sea.methods: a method is one registration. A toy augmentation registered outside `sea` (toy_method.py)
trains in the K-batched pass, through `seabench fit`, a Ray Tune sweep and the report; bad entries are refused
with the offending field named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sea import HeadConfig, TrainSettings, train_heads
from sea.errors import SeaError
from sea.methods import (
    OPTIMISATION_AXES,
    Method,
    get_method,
    group_order,
    import_plugins,
    method_names,
    ordered_methods,
    register_method,
    unregister_method,
)

TOY = Path(__file__).resolve().parents[1] / "plugins" / "toy_method.py"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def toy() -> None:
    import_plugins([str(TOY)])


def _weights(x, y, configs, seed=0):
    settings = TrainSettings(epochs=3, batch_size=64, seed=seed, schedule="cosine")
    return train_heads(torch.as_tensor(x), torch.as_tensor(y), configs, settings).weights


def test_the_toy_is_one_entry_and_trains_in_the_k_batched_pass(digits):
    (x, y), _, _ = digits
    assert "dropout" in method_names("head") and get_method("dropout").knobs == (
        "lr", "weight_decay", "lamda", "delta", "eta")
    assert group_order()[-1] == "dropout"                         # not mixing: after the re-weighting groups
    toy, other = HeadConfig(method="dropout", eta=0.3, lr=0.8), HeadConfig(method="sea", eta=0.2)
    alone = _weights(x, y, [toy])[0]
    # its own stream: the same numbers alone or in a K-batch with other methods' heads
    together = _weights(x, y, [other, toy, HeadConfig(method="linear")])[1]
    torch.testing.assert_close(together, alone)
    plain = _weights(x, y, [HeadConfig(method="linear", lr=0.8)])[0]
    assert not torch.allclose(alone, plain)                       # the augmentation changes training
    # η = 0 drops nothing: the plain head exactly (eta_is_step: trained in the plain group)
    torch.testing.assert_close(_weights(x, y, [HeadConfig(method="dropout", eta=0.0, lr=0.8)])[0], plain)
    assert not torch.allclose(_weights(x, y, [toy], seed=1)[0], alone)   # the seed reaches its stream


def test_fit_trains_a_plugin_method_and_refuses_what_is_not_a_head(tmp_path, digits, capsys):
    from orchestrator.commands.cli import main

    for name, (x, y) in zip(("train", "val", "test"), digits):
        np.savez(tmp_path / f"{name}.npz", features=x, labels=y)
    files = ["--train", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
             "--test", str(tmp_path / "test.npz")]
    assert main(["fit", *files, "--plugin", str(TOY), "--method", "dropout", "--eta", "0.1,0.3",
                 "--lr", "0.8", "--epochs", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method"] == "dropout" and {c["config"]["eta"] for c in out["candidates"]} == {0.1, 0.3}
    assert out["test_top1"] > 80                                  # digits: a working linear head
    assert main(["fit", *files, "--method", "finetune"]) == 2
    assert "runs in a sweep" in capsys.readouterr().err
    assert main(["fit", *files, "--method", "dropot"]) == 2
    assert "did you mean 'dropout'" in capsys.readouterr().err
    assert main(["fit", *files, "--plugin", "no_such_plugin_module", "--method", "sea"]) == 2
    assert "plugin 'no_such_plugin_module' cannot be imported" in capsys.readouterr().err


@pytest.mark.parametrize(("entry", "message"), [
    (Method("sea", 1, OPTIMISATION_AXES), "built in"),
    (Method("other", 3, OPTIMISATION_AXES), "random stream 3 is 'noise'"),
    (Method("other", 101, ("lr", "momentum")), "axes ['momentum'] are not HeadConfig fields"),
    (Method("other", 101, OPTIMISATION_AXES, kind="tree"), "kind 'tree'"),
    (Method("other", 101, OPTIMISATION_AXES, mixing=True), "mixing=True needs an augment"),
    (Method("other", 101, ("c",), kind="probe", augment=len), "apply to kind 'head' only"),
    (Method("other", 101, OPTIMISATION_AXES, grid={"eta": (0.1,)}), "grid values for ['eta']"),
    (Method("Other-1", 101, OPTIMISATION_AXES), "lower-case identifier"),
    (Method("dropout", 101, OPTIMISATION_AXES), "already registered"),
])
def test_a_bad_entry_is_refused_naming_what_is_wrong(entry, message):
    before = method_names()
    with pytest.raises(SeaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        register_method(entry)
    assert method_names() == before


def test_registration_order_is_the_report_order_and_unknown_names_follow():
    register_method(Method("zeta", 102, OPTIMISATION_AXES))
    try:
        assert ordered_methods(["zeta", "old_method", "logreg", "linear"]) == ["linear", "logreg", "zeta", "old_method"]
        with pytest.raises(SeaError, match="built in"):
            unregister_method("linear")
    finally:
        unregister_method("zeta")
    assert "zeta" not in method_names()


def test_a_changed_plugin_changes_the_cells_fingerprint(tmp_path):
    from orchestrator.sweep.fingerprint import method_code

    first = method_code("dropout")
    assert set(first) == {"code.method"} and method_code("sea") == {}    # built-ins: code.sea covers them
    edited = tmp_path / "toy_method_edited.py"
    edited.write_text(TOY.read_text().replace("draws >= ctx.eta[heads]", "draws > ctx.eta[heads]"))
    try:
        import_plugins([str(edited)])
        assert method_code("dropout") != first
    finally:
        for name in [m for m in sys.modules if m.startswith("sea_plugin_toy_method_")]:
            sys.modules.pop(name)
        import_plugins([str(TOY)])
    assert method_code("dropout") == first


def test_two_plugin_files_of_one_name_in_two_folders_are_two_plugins(tmp_path):
    for folder, (method, stream) in {"a": ("alpha_head", 201), "b": ("beta_head", 202)}.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "extras.py").write_text(
            "from sea.methods import OPTIMISATION_AXES, Method, register_method\n"
            f"register_method(Method({method!r}, {stream}, OPTIMISATION_AXES), replace=True)\n")
    try:
        import_plugins([str(tmp_path / "a" / "extras.py"), str(tmp_path / "b" / "extras.py")])
        assert {"alpha_head", "beta_head"} <= set(method_names())
    finally:
        for name in ("alpha_head", "beta_head"):
            unregister_method(name)
