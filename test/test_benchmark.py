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


@pytest.mark.slow
@needs_taming
def test_stage2_step_against_the_official_step():
    from utils.benchmark.stage2 import bench_stage2
    r = bench_stage2(torch.device("cpu"), quick=True, ctx=torch.autocast("cpu", enabled=False))
    assert r["median_ms"] > 0 and r["baseline_median_ms"] > 0
    assert r["ratio"] == pytest.approx(r["baseline_median_ms"] / r["median_ms"])
    assert "official minGPT" in r["what"]


@pytest.mark.slow
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


def test_gflop_per_image_counts_what_each_sampler_runs():
    """The arithmetic of one image, checked against torch's FLOP counter on the real forward passes (which does
    not see CPU attention, added here by its formula: 4 d per query and key, per layer)."""
    from torch.utils.flop_counter import FlopCounterMode

    from transformer.gpt import GPT, GPTConfig
    from transformer.maskgit import sample_masked
    from transformer.sampling import sample
    from utils.benchmark.maskgit import gflop_per_image
    n, d, L = 2, 32, 16
    for kind in ("gpt", "maskgit"):
        torch.manual_seed(0)
        cfg = GPTConfig(codebook_size=64, window=(4, 4), n_layer=n, n_head=4, n_embd=d, kind=kind)
        m = GPT(cfg).eval()
        with FlopCounterMode(display=False) as fc:
            if kind == "gpt":
                sample(m, 1)
                attention = n * 4 * d * sum(p + 1 for p in range(L))  # position p attends to p + 1 keys
            else:
                sample_masked(m, 1, steps=3)
                attention = 3 * n * 4 * d * (L + 1) ** 2
        assert (fc.get_total_flops() + attention) / 1e9 == pytest.approx(gflop_per_image(cfg, 3), rel=1e-9)


def test_maskgit_benchmark_rows(monkeypatch):
    from utils.benchmark import maskgit
    monkeypatch.setattr(maskgit, "LAYERS", 1)
    monkeypatch.setattr(maskgit, "WIDTH", 16)
    monkeypatch.setattr(maskgit, "HEADS", 2)
    r = maskgit.bench_maskgit(torch.device("cpu"), quick=True)
    assert set(r["rows"]) == {"8x8_batch1", "8x8_batch8", "16x16_batch1", "16x16_batch8"}
    row = r["rows"]["16x16_batch1"]
    assert r["ratio"] == pytest.approx(row["gpt_kv_ms"] / row["maskgit_ms"])
    assert r["ratio"] == pytest.approx(row["maskgit_tokens_per_sec"] / row["gpt_kv_tokens_per_sec"])
    assert r["ratio_8x8"] == pytest.approx(r["rows"]["8x8_batch1"]["ratio"])
    assert row["maskgit_gflop_per_image"] > row["gpt_kv_gflop_per_image"] > 0  # 8 rounds over every token cost more


@pytest.mark.slow
def test_canvas_scaling_rows(monkeypatch):
    from utils.benchmark import canvas
    gpt = canvas.scene_gpt(torch.device("cpu"))
    assert (gpt.cfg.window, gpt.cfg.n_embd, gpt.cfg.codebook_size, gpt.cfg.cond_codebook_size) == ((8, 8), 128, 256, 128)
    monkeypatch.setattr(canvas, "SIDES", (8, 10, 12))
    r = canvas.bench_canvas(torch.device("cpu"), quick=True)
    assert set(r["tokens_per_sec"]) == set(r["centred_tokens_per_sec"]) == {"8x8", "10x10", "12x12"}
    assert r["ratio"] == pytest.approx(r["tokens_per_sec"]["12x12"] / r["tokens_per_sec"]["10x10"])
    assert r["placement"] in ("centred", "strided") and r["plain_gain"] > 0 and r["vs_recompute"] > 0
    assert r["placement"] != "centred" or r["vs_recompute"] == r["centred_vs_recompute"]


@pytest.mark.slow
def test_resolution_scaling_rows(monkeypatch):
    """Each architecture at each size in a process of its own: time and peak memory, as ratios to the smallest size;
    the peak is the child's, not this process's (which holds a 1 GiB ballast)."""
    from utils.benchmark import resolution
    monkeypatch.setattr(resolution, "SIZES", (32, 64))
    ballast = torch.ones(256 * 2 ** 20)
    r = resolution.bench_resolution(torch.device("cpu"), quick=True)
    assert float(ballast[-1]) == 1.0
    for arch in ("custom_cpu", "paper_f16"):
        row = r[arch]
        assert set(row["ms"]) == set(row["peak_mb"]) == {"32", "64"} and row["ms_ratio"]["32"] == 1.0
        assert row["ms_ratio"]["64"] == pytest.approx(row["ms"]["64"] / row["ms"]["32"], abs=0.01)
        assert row["peak_ratio"]["64"] == pytest.approx(row["peak_mb"]["64"] / row["peak_mb"]["32"], abs=0.01)
        assert 0 < row["peak_mb"]["32"] < row["process_peak_mb"]["32"], row
    assert r["custom_cpu"]["process_peak_mb"]["64"] < 1200, r  # a 1M-parameter model's process, not this one's 1 GiB
    # the paper's 72M-parameter f16 model against the laptop's 1M: more memory at the same size
    assert r["paper_f16"]["peak_mb"]["64"] > r["custom_cpu"]["peak_mb"]["64"]
    assert r["median_ms"] == r["custom_cpu"]["ms"]["64"] and "custom_cpu: " in r["note"]


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@needs_taming
@pytest.mark.skipif(not __import__("os").path.isdir(FASHION), reason="Debian's dataset-fashion-mnist not installed")
def test_time_to_quality_wiring():
    """A few steps on real Fashion-MNIST: both sides see the same batches, ours stops at the first evaluation that
    reaches the baseline's PSNR (here a baseline of a few steps, reached at once), and the JSON holds every figure."""
    from utils.benchmark import quality
    x_train, x_eval = quality.fashion_batches(FASHION, steps=6, batch=8, n_eval=16)
    assert x_train.shape == (48, 1, 32, 32) and x_eval.shape == (16, 1, 32, 32) and x_train.min() >= -1
    base = quality.train_official(x_train, x_eval, 6, 8, torch.device("cpu"))
    assert base["seconds"] > 0 and 0 < base["codebook_usage"] <= 1 and base["perplexity"] >= 1
    ours = quality.train_ours(x_train, x_eval, 6, 8, torch.device("cpu"), target_psnr=-100.0, every=2)
    assert ours["reached"] == 2 and ours["steps"] == 2 and ours["trace"][0]["step"] == 2
    never = quality.train_ours(x_train, x_eval, 6, 8, torch.device("cpu"), target_psnr=1000.0, every=3)
    assert never["reached"] is None and never["steps"] == 6 and [t["step"] for t in never["trace"]] == [3, 6]
    r = quality.bench_time_to_quality(torch.device("cpu"), False, FASHION, steps=4, batch=8, n_eval=16, every=2)
    assert {"ratio", "baseline_s", "ours_s", "baseline_psnr", "ours_psnr", "ours_steps", "baseline_ssim", "ours_ssim",
            "baseline_codebook_usage", "ours_codebook_usage", "baseline_perplexity", "ours_perplexity"} <= set(r)
    assert "median_ms" not in r and r["ours_steps"] in (2, 4)
    if r["reached"]:
        assert r["ours_psnr"] >= r["baseline_psnr"] and r["ratio"] == pytest.approx(r["baseline_s"] / r["ours_s"])
    else:
        assert r["ratio"] == 0.0 and r["ours_steps"] == 4
