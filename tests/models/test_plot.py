"""The curve plotter reads training logs and never overwrites a file unasked."""
import pytest

from flowkern.models import plot as plot_cli
from flowkern.models import train as train_cli


def write_log(path, rows):
    path.write_text("\n".join([",".join(train_cli.LOG_HEADER)] + rows) + "\n")


def test_plot_reads_logs_and_refuses_to_clobber(tmp_path, capsys):
    a, b = tmp_path / "a" / "metrics.csv", tmp_path / "b" / "metrics.csv"
    a.parent.mkdir()
    b.parent.mkdir()
    write_log(a, ["1,3.0,0.001,1,0,,1.0,", "2,2.5,0.001,1,0,2.6,2.0,0.125"])
    write_log(b, ["1,3.1,0.001,1,0,2.9,1.0,"])
    log = plot_cli.read_log(a)
    assert log["eval_bpp"] == [(2, 2.6)] and log["continuation_acc"] == [(2, 0.125)]
    assert plot_cli.moving_average([(1, 1.0), (2, 3.0), (3, 5.0)], 2) == [(1, 1.0), (2, 2.0), (3, 4.0)]
    out = tmp_path / "c.png"
    plot_cli.main([str(a), str(b), "--out", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        plot_cli.main([str(a), "--out", str(out)])
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_cli.main([str(tmp_path / "missing.csv"), "--out", str(tmp_path / "d.png")])


def test_plot_draws_cglow_head_and_tail_series(tmp_path, capsys):
    log = tmp_path / "metrics.csv"
    log.write_text("\n".join([",".join(train_cli.CGLOW_LOG_HEADER), "1,3.0,0.001,1,0,,1.0,,,",
                              "2,2.5,0.001,1,0,2.6,2.0,0.25,2.1,2.85"]) + "\n")
    read = plot_cli.read_log(log)
    assert read["eval_head_bpp"] == [(2, 2.1)] and read["eval_tail_bpp"] == [(2, 2.85)]
    plot_cli.main([str(log), "--out", str(tmp_path / "a.png"), "--series", "head,tail,continuation"])
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        plot_cli.main([str(log), "--out", str(tmp_path / "b.png"), "--series", "head,bogus"])
    assert "--series" in capsys.readouterr().err
