"""The benchmark suite runs end to end (tiny sizes): tables, JSON and plots are written. No timing is asserted."""
import importlib.util
import json
import os
import platform

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_module():
    spec = importlib.util.spec_from_file_location("flowkern_bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_benchmark_suite_smoke(tmp_path):
    run = _run_module()
    out = str(tmp_path / "smoke")
    sections = run.main(["--suite", "smoke", "--out", out, "--device", "cpu"])
    assert {"Fused ops", "Memory vs depth (one Glow level)", "Video loader (VideoFolder, mp4 clips)"} <= set(sections)
    compat = [t for t in sections if t.startswith("Compat: ")]
    assert any("rosinality" in t for t in compat), compat
    for t in compat:  # each adapter against its original: both ran, peak memory measured
        assert sections[t] and all(r["original_ms"] > 0 and r["flowkern_ms"] > 0 for r in sections[t]), sections[t]
    assert {row["op"] for row in sections["Fused ops"]} == {"channel_affine", "actnorm_invconv", "actnorm_invconv_lu",
                                                          "affine_coupling"}
    with open(out + ".json") as f:
        data = json.load(f)
    assert data["environment"]["torch"] and data["sections"]["Fused ops"]
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"  # where mallopt exists
    assert data["environment"]["cpu_allocator"] == ("freed memory kept" if glibc else "default")
    assert data["environment"]["cpu_timing"] == "blocks of back-to-back calls"
    for row in data["sections"]["Fused ops"]:
        assert row["eager_ms"] > 0 and row["flowkern_ms"] > 0 and row["backend"] == "cpu"
    depth = data["sections"]["Memory vs depth (one Glow level)"]
    assert depth[-1]["reversible_saved_MB"] == pytest.approx(depth[0]["reversible_saved_MB"])  # flat in depth
    assert depth[-1]["plain_peak_MB"] > depth[0]["plain_peak_MB"]
    check = data["sections"]["Meta-device estimate vs real measurement"][0]
    assert check["meta_over_real"] == pytest.approx(1.0, rel=0.05)
    assert all(r["per_frame_latents"] > 0 for r in data["sections"][
        "VideoFlow memory per extra frame (real peak, small model)"])
    assert os.path.exists(out + ".md") and os.path.exists(out + "-depth.png")


def test_a_run_never_replaces_another(tmp_path, capsys):
    """An explicit --out that holds results is refused before anything runs (unless --overwrite); the default name
    takes a free suffix."""
    run = _run_module()
    (tmp_path / "r.md").write_text("an earlier run")
    with pytest.raises(SystemExit):
        run.main(["--suite", "smoke", "--device", "cpu", "--only", "roofline", "--out", str(tmp_path / "r")])
    assert "exists: choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "r.md").read_text() == "an earlier run"
    assert run.free_name(str(tmp_path / "r")) == str(tmp_path / "r-2")
    (tmp_path / "r-2.json").write_text("{}")
    assert run.free_name(str(tmp_path / "r")) == str(tmp_path / "r-3")
    assert run.free_name(str(tmp_path / "new")) == str(tmp_path / "new")
    run.main(["--suite", "smoke", "--device", "cpu", "--only", "roofline", "--out", str(tmp_path / "r"), "--overwrite"])
    assert (tmp_path / "r.md").read_text() != "an earlier run"
