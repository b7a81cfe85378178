import json
import subprocess
import sys

from conftest import ROOT


def test_benchmark_json_and_errors(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "utils.benchmark", "--quick", "--only", "stage2_step,codebook_lookup",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1000:]
    res = json.loads(out.read_text())
    assert set(res) == {"stage2_step", "codebook_lookup"}
    for v in res.values():
        assert v["median_ms"] > 0 and v["device"] == "cpu"
    assert res["stage2_step"]["ratio"] > 0
    assert "stage2_step" in r.stdout and "ratio" in r.stdout
    r = subprocess.run([sys.executable, "-m", "utils.benchmark", "--only", "nope"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "unknown benchmark(s) ['nope']" in r.stderr


def test_lookup_memory_excludes_the_parent_process():
    """The lookup's peak memory is the child's own: Linux carries ru_maxrss over from the parent across fork
    and exec, which once made this figure report the benchmark process's footprint instead."""
    import torch

    from utils.benchmark import bench_codebook
    ballast = torch.ones(256 * 2 ** 20)  # 1 GiB resident in this process
    res = bench_codebook(torch.device("cpu"), quick=True)
    assert float(ballast[-1]) == 1.0
    assert 0 < res["peak_mib"] < 300, res  # 4096 x 256 against 16384 codes in 16 MiB blocks: tens of MiB
    if "baseline_peak_mib" in res:  # the official lookup holds the full 4096 x 16384 distance matrix (256 MiB)
        assert res["baseline_peak_mib"] > 256 and res["memory_ratio"] > 4
