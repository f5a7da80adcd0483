"""Worker daemons: load datasets, evaluate trials, report results to the coordinator."""
