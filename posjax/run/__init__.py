"""The run layer: a run built from its config, and everything that keeps its directory
(record, lock, checkpoints, metrics). See posjax.run.experiment.Run."""
