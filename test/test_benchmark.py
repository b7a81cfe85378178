"""The benchmark harness and command line (on a fake clock and stub runners), one real benchmark against the
official code at its quick size, and the lookup's memory figure."""
import json

import pytest
import torch

from conftest import needs_taming
from utils.benchmark import cli, harness


def test_alternate_takes_medians_and_the_ratio(monkeypatch):
    """Warm-up runs are not timed; runs alternate; the ratio is baseline median / our median."""
    clock = {"t": 0.0}
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock["t"])
    calls = []

    def runner(name, costs):
        it = iter(costs)

        def run():
            calls.append(name)
            clock["t"] += next(it) / 1000.0
        return run
    ours = runner("ours", [50, 50, 2, 9, 3, 4, 1])  # two warm-up runs, then 2, 9, 3, 4, 1 ms: median 3
    base = runner("base", [70, 70, 12, 11, 10, 90, 8])  # median 11
    r = harness.alternate(ours, base, torch.device("cpu"), warmup=2, repeats=5)
    assert calls[:6] == ["ours", "base"] * 3
    assert r["median_ms"] == pytest.approx(3.0) and r["baseline_median_ms"] == pytest.approx(11.0)
    assert r["ratio"] == pytest.approx(11 / 3) and r["runs"] == 5
    alone = harness.alternate(runner("ours", [1, 5, 6, 7]), None, torch.device("cpu"), warmup=1, repeats=3)
    assert alone["median_ms"] == pytest.approx(6.0) and "ratio" not in alone


def test_cli_table_json_and_errors(tmp_path, monkeypatch, capsys):
    seen = []

    def stub(device, quick, ctx):
        seen.append((device.type, quick))
        return {"median_ms": 4.0, "baseline_median_ms": 10.0, "ratio": 2.5, "tokens_per_sec": 1000.0}
    monkeypatch.setattr(cli, "RUNNERS", {"a": stub, "b": lambda d, q, c: {"median_ms": 1.0, "note": "no baseline"}})
    out = tmp_path / "b.json"
    cli.main(["--quick", "--json", str(out)])
    res = json.loads(out.read_text())
    assert set(res) == {"a", "b"} and seen == [("cpu", True)]
    assert res["a"]["ratio"] == 2.5 and res["a"]["device"] == "cpu" and res["a"]["precision"] == "fp32"
    assert res["b"]["quick"] is True and "ratio" not in res["b"]
    table = capsys.readouterr().out
    assert "2.50x" in table and "1000 tok/s" in table and "no baseline" in table
    cli.main(["--only", "b"])
    assert len(seen) == 1  # only b ran
    with pytest.raises(SystemExit) as e:
        cli.main(["--only", "nope"])
    assert e.value.code == 2 and "unknown benchmark(s) ['nope']; choose from a, b" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            cli.main(["--device", "cuda"])
        assert e.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


@needs_taming
def test_stage2_step_against_the_official_step():
    from utils.benchmark.stage2 import bench_stage2
    r = bench_stage2(torch.device("cpu"), quick=True, ctx=torch.autocast("cpu", enabled=False))
    assert r["median_ms"] > 0 and r["baseline_median_ms"] > 0
    assert r["ratio"] == pytest.approx(r["baseline_median_ms"] / r["median_ms"])
    assert "official minGPT" in r["what"]


def test_lookup_memory_excludes_the_parent_process():
    """The lookup's peak memory is the child's own: Linux carries ru_maxrss over from the parent across fork
    and exec, which once made this figure report the benchmark process's footprint instead."""
    from utils.benchmark.lookup import bench_codebook
    ballast = torch.ones(256 * 2 ** 20)  # 1 GiB resident in this process
    res = bench_codebook(torch.device("cpu"), quick=True)
    assert float(ballast[-1]) == 1.0
    assert 0 < res["peak_mib"] < 300, res  # 4096 x 256 against 16384 codes in 16 MiB blocks: tens of MiB
    if "baseline_peak_mib" in res:  # the official lookup holds the full 4096 x 16384 distance matrix (256 MiB)
        assert res["baseline_peak_mib"] > 256 and res["memory_ratio"] > 4
