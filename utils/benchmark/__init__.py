"""Speed benchmarks, ours against a baseline measured side by side in the same run.

    python -m utils.benchmark [--json out.json] [--device cpu|cuda] [--quick] [--only stage1_step,sample_kv]

harness: timing and the alternation of candidate and baseline; official: the official taming-transformers
code, patched to run offline; stage1, stage2, lookup, precision, maskgit, quality (time to quality): the
benchmarks; cli: the command line.
"""
