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
