"""Fine-tuning recipes per backbone family: chosen by the timm family, overridden per backbone, refused where a
key does not apply; and what reaches the run — ssl-transfer's wd / lr, MAE's layer-wise decay, warm-up, label
smoothing and drop-path — on tiny random-init timm models, offline, on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.config import SweepConfig, load_config
from orchestrator.errors import OrchestratorError
from orchestrator.finetune import backbone_recipe, build_net, build_optimizer, training_loss
from orchestrator.finetune.optim import build_schedule
from orchestrator.finetune_config import FinetuneConfig

VIT, RESNET, EFFNET = "random:test_vit@32", "random:test_resnet@32", "random:test_efficientnet@32"


def section(**finetune: object) -> FinetuneConfig:
    return load_config(data={"name": "r", "backbones": [VIT, RESNET, EFFNET], "tasks": ["digits"],
                             "methods": ["finetune"], "finetune": finetune}).finetune


def test_the_timm_family_chooses_the_recipe_and_anything_else_runs_the_default() -> None:
    chosen = {b: backbone_recipe(section(), b) for b in (VIT, RESNET, EFFNET)}
    assert {b: (r.name, r.family) for b, r in chosen.items()} == {
        VIT: ("mae", "vision_transformer"), RESNET: ("ssl-transfer", "resnet"), EFFNET: ("default", "efficientnet")}
    vit, resnet, default = (dict(chosen[b].keys) for b in (VIT, RESNET, EFFNET))
    assert (vit["optimizer"], vit["layer_decay"], vit["warmup_steps"], vit["label_smoothing"], vit["drop_path"]) == \
        ("adamw", 0.65, 250, 0.1, 0.1)
    assert vit["betas"] == (0.9, 0.999) and vit["scale_lr"] and vit["weight_decay"] == (0.05,)
    assert (resnet["optimizer"], resnet["momentum"], resnet["weight_decay_over_lr"], resnet["sync_batchnorm"]) == \
        ("sgd-nesterov", 0.9, True, True)
    assert resnet["lr"] == (0.1, 0.01, 0.001, 0.0001) and resnet["weight_decay"] == (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
    assert "layer_decay" not in resnet and "momentum" not in vit
    assert not default["weight_decay_over_lr"] and not default["sync_batchnorm"]
    assert all(dict(r.keys)["steps"] == 5000 and dict(r.keys)["batch_size"] == 64 for r in chosen.values())


def test_the_section_sets_every_backbone_and_recipes_one_backbone_over_it() -> None:
    ft = section(steps=7, recipes={VIT: {"layer_decay": 0.75, "steps": 9}, EFFNET: {"recipe": "ssl-transfer"}})
    vit, resnet, effnet = (backbone_recipe(ft, b) for b in (VIT, RESNET, EFFNET))
    assert (dict(vit.keys)["layer_decay"], dict(vit.keys)["steps"], dict(resnet.keys)["steps"]) == (0.75, 9, 7)
    assert effnet.name == "ssl-transfer" and dict(effnet.keys)["weight_decay_over_lr"]
    assert backbone_recipe(section(recipe="default"), VIT).name == "default"   # one recipe named for all
    cfg = load_config(data={"name": "r", "backbones": [VIT], "tasks": ["digits"],
                            "finetune": {"recipes": {VIT: {"recipe": "mae", "betas": [0.9, 0.95]}}}})
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["finetune"]["recipes"] == {VIT: {"recipe": "mae", "betas": [0.9, 0.95]}}


@pytest.mark.parametrize(("finetune", "backbone", "named"), [
    ({"layer_decay": 0.7}, RESNET, "'finetune.layer_decay' does not apply to backbone 'random:test_resnet@32'"),
    ({"recipes": {RESNET: {"layer_decay": 0.7}}}, RESNET, f"'finetune.recipes.{RESNET}.layer_decay' does not apply"),
    ({"momentum": 0.8}, VIT, "'finetune.momentum' does not apply to backbone 'random:test_vit@32': the mae recipe"),
    ({"optimizer": "adamw"}, RESNET, "'finetune.optimizer'=adamw for backbone 'random:test_resnet@32': the "
                                     "ssl-transfer recipe trains with sgd-nesterov or sgd"),
    ({"num_workers": 2, "recipes": {RESNET: {"sync_batchnorm": True}}}, RESNET,
     f"'finetune.recipes.{RESNET}.sync_batchnorm' is true for backbone 'random:test_resnet@32'"),
    ({"recipes": {VIT: {"batch_size": 33}}, "num_workers": 2}, VIT, f"'finetune.recipes.{VIT}.batch_size'=33"),
])
def test_a_key_the_recipe_has_not_or_cannot_run_is_refused_naming_it(finetune, backbone, named) -> None:
    with pytest.raises(OrchestratorError) as err:
        backbone_recipe(section(**finetune), backbone)
    assert named in str(err.value)


def test_ssl_transfers_sync_batchnorm_is_for_gpu_workers_and_cpu_workers_normalise_their_share() -> None:
    assert dict(backbone_recipe(section(num_workers=2), RESNET).keys)["sync_batchnorm"]   # not refused: its default
    gpu = backbone_recipe(section(num_workers=2, gpus_per_worker=1.0, recipes={RESNET: {"sync_batchnorm": True}}), RESNET)
    assert dict(gpu.keys)["sync_batchnorm"]


def test_an_unknown_recipe_or_backbone_in_recipes_is_refused_naming_the_key() -> None:
    with pytest.raises(OrchestratorError, match=r"'finetune.recipes.random:test_vit@32.recipe' must be one of auto, "
                                                r"ssl-transfer, mae, default; got 'maee' \(did you mean 'mae'\?\)"):
        section(recipes={VIT: {"recipe": "maee"}})
    with pytest.raises(OrchestratorError, match=r"'finetune\.recipes\.random:test_vit@32\.layer_dcay'; did you mean"):
        section(recipes={VIT: {"layer_dcay": 0.7}})
    with pytest.raises(OrchestratorError, match=r"'finetune\.betas' needs two values"):
        section(betas=[0.9])
    from orchestrator.sweep import plan_cells

    cfg = load_config(data={"name": "r", "backbones": [VIT], "tasks": ["digits"], "methods": ["finetune"],
                            "finetune": {"recipes": {"mae-vit-b16": {"layer_decay": 0.7}}}})
    with pytest.raises(OrchestratorError, match=r"'finetune.recipes' names \['mae-vit-b16'\], not among"):
        plan_cells(cfg, ["digits"])


def test_ssl_transfer_gives_sgd_weight_decay_over_lr_and_the_default_the_value_itself() -> None:
    for backbone, over_lr in ((RESNET, True), (EFFNET, False)):
        run = backbone_recipe(section(), backbone).run(lr=0.001, weight_decay=1e-3, seed=0)
        net, _ = build_net(backbone, 3, seed=0)
        (group,) = build_optimizer(run, net).param_groups
        expected = 1e-3 / 0.001 if over_lr else 1e-3   # ssl-transfer's grid (lr, wd / lr): up to 10
        assert group["weight_decay"] == pytest.approx(expected) and group["lr"] == 0.001 and group["nesterov"]
        assert len(group["params"]) == len(list(net.parameters()))   # every parameter decayed, as ssl-transfer


def test_layer_decay_gives_per_group_lrs_falling_toward_the_stem_and_mae_weight_decay() -> None:
    run = backbone_recipe(section(), VIT).run(lr=1e-3, weight_decay=0.05, seed=0)
    net, _ = build_net(VIT, 3, seed=0, drop_path=run.drop_path)
    optimizer = build_optimizer(run, net)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)
    lr = 1e-3 * 64 / 256   # MAE: base lr × batch / 256
    depth = len(net.backbone.blocks)
    by_name = {name: group for group in optimizer.param_groups for name, p in net.named_parameters()
               if any(p is q for q in group["params"])}
    expected = {"backbone.patch_embed.proj.weight": 0.65 ** (depth + 1), "backbone.cls_token": 0.65 ** (depth + 1),
                **{f"backbone.blocks.{i}.mlp.fc1.weight": 0.65 ** (depth - i) for i in range(depth)},
                "head.weight": 1.0, "head.bias": 1.0}
    assert {n: by_name[n]["lr"] for n in expected} == pytest.approx({n: lr * s for n, s in expected.items()})
    lrs = [by_name[f"backbone.blocks.{i}.mlp.fc1.weight"]["lr"] for i in range(depth)]
    assert lrs == sorted(lrs) and lrs[0] < lrs[-1] < by_name["head.weight"]["lr"]
    decay = {n: by_name[n]["weight_decay"] for n in ("backbone.blocks.0.mlp.fc1.weight", "backbone.blocks.0.norm1.weight",
                                                     "backbone.blocks.0.mlp.fc1.bias", "backbone.pos_embed",
                                                     "backbone.cls_token", "head.weight", "head.bias")}
    assert decay == {"backbone.blocks.0.mlp.fc1.weight": 0.05, "backbone.blocks.0.norm1.weight": 0.0,
                     "backbone.blocks.0.mlp.fc1.bias": 0.0, "backbone.pos_embed": 0.0, "backbone.cls_token": 0.0,
                     "head.weight": 0.05, "head.bias": 0.0}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))


def test_warm_up_is_linear_from_zero_then_cosine_to_zero_in_every_group() -> None:
    run = backbone_recipe(section(recipes={VIT: {"warmup_steps": 4}}), VIT).run(lr=1e-3, weight_decay=0.05, seed=0)
    net, _ = build_net(VIT, 3, seed=0)
    optimizer = build_optimizer(run, net)
    schedule = build_schedule(run, optimizer, total_steps=12)
    first, last = optimizer.param_groups[0], optimizer.param_groups[-1]
    base = (first["initial_lr"], last["initial_lr"])   # the groups' own lrs (layer decay), before the schedule
    seen = []
    for _ in range(12):
        seen.append((first["lr"] / base[0], last["lr"] / base[1]))
        optimizer.step()
        schedule.step()
    expected = [0.0, 0.25, 0.5, 0.75] + [0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert [a for a, _ in seen] == pytest.approx(expected) and [b for _, b in seen] == pytest.approx(expected)
    assert first["lr"] == pytest.approx(0.0, abs=1e-12)   # cosine to 0 at the end of the run


def test_label_smoothing_reaches_the_loss_and_drop_path_the_model() -> None:
    run = backbone_recipe(section(), VIT).run(lr=1e-3, weight_decay=0.05, seed=0)
    logits, labels = torch.tensor([[4.0, 0.0, -2.0]]), torch.tensor([0])
    smoothed = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert training_loss(run, logits, labels) == pytest.approx(float(smoothed))
    assert float(smoothed) > float(torch.nn.functional.cross_entropy(logits, labels))
    net, _ = build_net(VIT, 3, seed=0, drop_path=run.drop_path)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in net.backbone.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)   # rising by depth
    plain, _ = build_net(VIT, 3, seed=0)
    assert not hasattr(plain.backbone.blocks[-1].drop_path1, "drop_prob")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain.state_dict().values()))


def test_a_changed_recipe_changes_only_that_backbones_fine_tuning_fingerprint(tmp_path) -> None:
    from orchestrator.sweep import Cell
    from orchestrator.sweep.fingerprint import cell_fingerprint

    data = {"name": "r", "backbones": [VIT, RESNET], "tasks": ["digits"], "methods": ["finetune"],
            "store": str(tmp_path / "store"), "finetune": {"recipes": {VIT: {"layer_decay": 0.65}}}}
    before = load_config(data=data)
    cells = [Cell(b, "digits", "finetune", 0) for b in (VIT, RESNET)]
    prints = {c.backbone: cell_fingerprint(before, c, {}, {}) for c in cells}
    assert prints[VIT].parts["finetune.recipe.layer_decay"] == 0.65 and prints[VIT].parts["finetune.recipe.recipe"] == "mae"
    after = load_config(data={**data, "finetune": {"recipes": {VIT: {"layer_decay": 0.75}}}})
    assert cell_fingerprint(after, cells[0], {}, {}) != prints[VIT]
    assert cell_fingerprint(after, cells[1], {}, {}) == prints[RESNET]
    explicit = load_config(data={**data, "finetune": {"recipes": {VIT: {"recipe": "mae"}}}})   # = auto's choice
    assert cell_fingerprint(explicit, cells[0], {}, {}) == prints[VIT]
