"""The training engine shared by every method: loop, schedule, checkpoints, evaluation, caches."""
