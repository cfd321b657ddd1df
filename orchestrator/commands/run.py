"""`seabench run --config FILE`: extract (cached units skipped) → sweep on Ray Tune → report.

Idempotent and resumable: extraction skips verified units, the sweep skips cells MLflow holds as
complete, and the report is rebuilt from MLflow. Rerunning after an interruption finishes the rest.
One sweep per experiment at a time: a second run of a live sweep's experiment exits with code 2,
naming the holder; `--takeover` takes a stale lease over (orchestrator.sweep.lease).
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.commands.scaling import apply_scaling, scaling_arguments
from orchestrator.config import SweepConfig, load_config
from orchestrator.errors import OrchestratorError

HELP = "Extract features, sweep every (backbone, task, method, seed) cell on Ray Tune, and write the report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="sweep YAML, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (value parsed as YAML), e.g. --set trainer.epochs=5; repeatable")
    parser.add_argument("--store", default=None, help="feature store path or fsspec URI (config key `store`)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI, e.g. http://host:5000 (default sqlite:///mlflow.db)")
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto', 'HOST:6379'; not ray://, "
                        "submit with `ray job submit` instead); default: $RAY_ADDRESS if set, else a local cluster "
                        "of its own (never one a `ray start` left behind: pass auto for that)")
    scaling_arguments(parser, "the GPUs/CPUs the config needs")
    parser.add_argument("--out", default=None, help="report folder (default reports/<name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--takeover", action="store_true",
                        help="take over the experiment's lease from a sweep whose heartbeat is stale (its machine "
                             "died); refused while the holder's heartbeat is fresh. One sweep per experiment at a time")


def check_names(cfg: SweepConfig, where: str) -> tuple[str, ...]:
    """The config's stored backbones, once every backbone and task name is known to exist: a typo is an
    error naming the config and the key before anything starts."""
    from orchestrator.extract import backbone_parts
    from orchestrator.sweep import expand_backbones
    from tasks import TaskError, get_backbone, get_task

    backbones = expand_backbones(cfg.backbones)
    checks = [("backbones", name, get_backbone) for b in backbones for name in backbone_parts(b)]
    checks += [("tasks", name, get_task) for name in cfg.tasks]
    for key, name, lookup in checks:
        try:
            lookup(name)
        except TaskError as exc:
            raise OrchestratorError(f"config {where}: {key}: {exc}") from exc
    return backbones


def available_tasks(cfg: SweepConfig) -> list[str]:
    """The required tasks, plus each optional task whose data is present (else a printed note)."""
    from tasks import TaskError, build_task, get_task

    present = list(cfg.tasks)
    for task in cfg.optional_tasks:
        if task in present:
            continue
        try:
            for split in get_task(task).stored_splits:
                build_task(task, cfg.data_root, split)
        except (TaskError, OSError) as exc:
            print(f"note: optional task {task!r} skipped: its data is not present ({exc})", file=sys.stderr)
            continue
        present.append(task)
    return present


def _extract(cfg: SweepConfig, tasks: list[str], backbones: tuple[str, ...], progress: bool) -> dict[str, str]:
    """Extract what the sweep needs; returns unit id -> feature key, the exact units its trials read."""
    from orchestrator.extract import ActorSettings, backbone_parts, extract_features

    stored = list(dict.fromkeys(p for b in backbones for p in backbone_parts(b)))
    ex = cfg.extraction
    summary = extract_features(
        stored, tasks, store=cfg.store, data_root=cfg.data_root, shard_size=ex.shard_size, dtype=ex.dtype,
        address=cfg.address, num_cpus=cfg.num_cpus, progress=progress,
        settings=ActorSettings(num_gpus_per_actor=ex.num_gpus_per_actor, num_actors=ex.num_actors,
                               batch_size=ex.batch_size, skip_bad_images=ex.skip_bad_images, plugins=cfg.plugins),
    )
    skipped = summary.images_skipped + summary.images_skipped_before
    print(f"extract: {summary.units} units ({summary.units_skipped} cached), "
          f"{summary.images} images in {summary.seconds:.1f} s"
          + (f"; {skipped} unreadable image(s) skipped (see the report)" if skipped else "")
          + (f"; {summary.actor_restarts} shard job(s) re-submitted after their actor was lost"
             if summary.actor_restarts else ""))
    return dict(summary.keys)


def _check_shapes(cfg: SweepConfig) -> None:
    """On an autoscaling cluster, before anything runs: refuse an extraction actor or a trial of a shape
    that no node type of the autoscaler holds (orchestrator.capacity.check_shape)."""
    from orchestrator.capacity import check_shape

    check_shape({"CPU": 1.0, "GPU": cfg.extraction.num_gpus_per_actor}, "an extraction actor",
                "Lower extraction.num_gpus_per_actor to what a node type holds, or add such a type")
    check_shape({"CPU": cfg.resources.cpu, "GPU": cfg.resources.gpu}, "a sweep trial (resources.cpu, resources.gpu)",
                "Lower resources.cpu / resources.gpu to what a node type holds, or add such a type")


def run(args: argparse.Namespace) -> int:
    from orchestrator.extract import backbone_parts, preflight_inputs
    from orchestrator.raycluster import check_address, init_ray
    from orchestrator.sweep import SweepTracker, run_sweep

    cfg = load_config(args.config, args.overrides, store=args.store, tracking_uri=args.tracking_uri,
                      address=args.address, out=args.out)
    check_address(cfg.address)
    # one sweep per experiment at a time: refuse within seconds, before Ray starts and extraction runs
    SweepTracker(cfg.tracking_uri, cfg.name, takeover=args.takeover).check_lease()
    apply_scaling(args)
    progress = not args.no_progress
    backbones = check_names(cfg, args.config)
    tasks = available_tasks(cfg)
    if not tasks:
        print("run: no task has data present; nothing to do", file=sys.stderr)
        return 1
    # every missing dataset and weights file at once, before Ray starts
    preflight_inputs(list(dict.fromkeys(p for b in backbones for p in backbone_parts(b))), tasks, cfg.data_root)
    init_ray(cfg.address, cfg.num_cpus)
    _check_shapes(cfg)
    keys = _extract(cfg, tasks, backbones, progress)
    summary = run_sweep(cfg, tasks, keys=keys, progress=progress, takeover=args.takeover)
    print(f"sweep {cfg.name!r}: {summary.cells} cells; {summary.skipped} already complete, "
          f"{summary.completed} computed, {len(summary.failed)} failed, in {summary.seconds:.1f} s "
          f"(MLflow {cfg.tracking_uri}, experiment {cfg.name!r})")
    for cell_id in summary.failed:
        print(f"  failed: {cell_id} (see its MLflow run's `error` tag; rerun to retry)", file=sys.stderr)
    if summary.not_run:
        print(f"sweep stopped with {summary.not_run} cell(s) not run; rerun the same command to resume",
              file=sys.stderr)
    from orchestrator.report import build_report

    paths = build_report(cfg.name, cfg.report_dir, cfg.tracking_uri, reference_csv=cfg.report.reference_csv)
    print(f"report: {paths.leaderboard_html} (also {paths.leaderboard_md.name}, {paths.results_csv.name} "
          f"in {paths.out_dir})")
    return 1 if summary.failed or summary.not_run else 0
