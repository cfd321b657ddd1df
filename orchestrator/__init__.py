"""Everything that schedules, stores and reports: Ray extraction, the feature store, Tune sweeps,
MLflow tracking, leaderboard reports and the `seabench` command line."""

__version__ = "0.1.0"
