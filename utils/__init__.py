"""The machinery below the scripts, in packages by layer (each may import only the layers before it):
core (errors, config machinery, checkpoint files, processes, precision, the run log), data (datasets and what
they read; below the models, which never import them), train (the two stage schemas and the mechanics of a
training run), eval (metrics and the judges of generated images). At this level only the command-line tools, run as `python -m utils.NAME`: visualize,
reconstruct, convert_taming, sample_eval, benchmark."""
