"""`seabench extract`: backbone features of tasks' stored splits into the Parquet feature store, on Ray."""

from __future__ import annotations

import argparse

from orchestrator.commands.scaling import apply_scaling, scaling_arguments
from orchestrator.config import ExtractionConfig
from orchestrator.extract import DEFAULT_DATA_ROOT, DEFAULT_STORE, DTYPES, ActorSettings, extract_features

# one set of defaults with `seabench run` (the config's extraction section), so that `extract` then
# `run` with default settings reuse the same features instead of extracting twice
DEFAULTS = ExtractionConfig()

HELP = "extract backbone features of tasks' stored splits into the Parquet feature store (Ray, resumable)"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", type=_names, required=True, metavar="NAME[,NAME]",
                        help="backbone names (see `seabench list backbones`), or random:<timm-arch>@<size>")
    parser.add_argument("--task", type=_names, required=True, metavar="NAME[,NAME]",
                        help="task names (see `seabench list tasks`), or imagefolder:<path>")
    parser.add_argument("--split", type=_names, default=None, metavar="SPLIT[,SPLIT]",
                        help="stored splits to extract (default: all of each task's stored splits)")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="dataset root folder (default: %(default)s)")
    parser.add_argument("--store", default=DEFAULT_STORE,
                        help="feature store: a folder or an fsspec URI such as s3://bucket/features (default: %(default)s)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto', 'HOST:6379'; not ray://, submit with `ray job submit` "
                             "instead); default: $RAY_ADDRESS if set, else a local one of its own (auto joins "
                             "the one `ray start` left)")
    scaling_arguments(parser, "the actors' GPUs/CPUs")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--shard-size", type=int, default=DEFAULTS.shard_size, help="samples per Parquet shard (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default=DEFAULTS.dtype, help="stored feature dtype (default: %(default)s)")
    parser.add_argument("--num-gpus-per-actor", type=float, default=DEFAULTS.num_gpus_per_actor,
                        help="GPUs one extraction actor holds (e.g. 1 on a GPU cluster; fractions pack small models; "
                             "default: %(default)s)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="CPUs of one extraction actor (default: %(default)s)")
    parser.add_argument("--num-actors", type=int, default=None,
                        help="extraction actors (default: as many as the cluster holds, at most one per shard)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers per actor (default: 0 on ≤2 cores, else a few)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out images that cannot be decoded instead of stopping (they are listed in the "
                             "unit's _manifest.json, counted in the summary and in the report)")
    parser.add_argument("--download", action="store_true", help="download missing official datasets first")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")


def run(args: argparse.Namespace) -> int:
    apply_scaling(args)
    settings = ActorSettings(num_gpus_per_actor=args.num_gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                             num_actors=args.num_actors, num_workers=args.num_workers, batch_size=args.batch_size,
                             skip_bad_images=args.skip_bad_images)
    summary = extract_features(
        args.backbone, args.task, splits=args.split, store=args.store, data_root=args.data_root,
        shard_size=args.shard_size, dtype=args.dtype, address=args.address, num_cpus=args.num_cpus,
        settings=settings, download=args.download, progress=not args.no_progress,
    )
    print(summary.table())
    for unit, key in summary.keys.items():
        print(f"{unit}: {key}")
    return 0
