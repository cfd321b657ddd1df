"""The evidence behind the report's claims, one layer above the statistics (`report.stats`) and below the
section builders (`report.sections`, `report.leaderboard`, `report.build`), which import it and never the
other way round: the runs' flags, bootstrap intervals over test examples and over cells, the Stability
section, and the claims' small print."""
