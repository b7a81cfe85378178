"""The mechanics of a training run: the two stage schemas, run start and checkpoints, batches in resumable order, and what happens inside the loops. May import core, the models and data."""
