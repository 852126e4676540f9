"""Plot a training run's curves: `python -m flowkern.models.plot runs/x/metrics.csv --out curves.png`.

Train bits/pixel (a moving average over --smooth steps), held-out bits/pixel and, where the run measured it, the
continuation accuracy of sampled frames (right axis); for CGlow, the held-out bits/pixel of the first frame (head)
and of the later ones (tail). --series picks which. Several runs' logs can be given: each gets its own colour,
labelled by its folder (or --labels).
"""
import argparse
import csv
import os


def read_log(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{path}: not a training log (no step column)")

    def column(name):
        return [(int(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
    return {name: column(name) for name in ("train_bpp", "eval_bpp", "continuation_acc", "eval_head_bpp",
                                            "eval_tail_bpp")}


SERIES = ("train", "eval", "head", "tail", "continuation")


def moving_average(points, n):
    out, acc = [], []
    for step, v in points:
        acc.append(v)
        acc = acc[-n:]
        out.append((step, sum(acc) / len(acc)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m flowkern.models.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="metrics.csv files written by flowkern.models.train")
    p.add_argument("--out", required=True, help="the PNG to write (never over an existing file unless --overwrite)")
    p.add_argument("--labels", default=None, help="comma-separated names for the logs")
    p.add_argument("--smooth", type=int, default=50)
    p.add_argument("--series", default="train,eval,continuation",
                   help=f"comma-separated, of {', '.join(SERIES)} (head, tail: CGlow's first and later frames)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [os.path.basename(os.path.dirname(os.path.abspath(f)))
                                                          for f in args.logs]
    if len(labels) != len(args.logs):
        p.error(f"--labels: expected {len(args.logs)} names, got {len(labels)}")
    series = args.series.split(",")
    if not series or set(series) - set(SERIES):
        p.error(f"--series: expected names from {', '.join(SERIES)}, got {args.series!r}")
    if os.path.exists(args.out) and not args.overwrite:
        p.error(f"--out: {args.out} exists: choose another file, or pass --overwrite")
    try:
        logs = [read_log(f) for f in args.logs]
    except (OSError, ValueError, KeyError) as e:
        p.error(str(e))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowkern.models.video_io import write_then_rename
    fig, ax = plt.subplots(figsize=(8, 4.5))
    acc_ax = None
    for i, (log, label) in enumerate(zip(logs, labels)):
        color = f"C{i}"
        if log["train_bpp"] and "train" in series:
            ax.plot(*zip(*moving_average(log["train_bpp"], args.smooth)), color=color, alpha=0.35, lw=1,
                    label=f"{label}: train (avg of {args.smooth})")
        for name, style in (("head", ":"), ("tail", "-.")):
            if log[f"eval_{name}_bpp"] and name in series:
                ax.plot(*zip(*log[f"eval_{name}_bpp"]), color=color, lw=1.5, ls=style, marker="^", ms=3,
                        label=f"{label}: held out, {'first frame' if name == 'head' else 'later frames'}")
        if log["eval_bpp"] and "eval" in series:
            ax.plot(*zip(*log["eval_bpp"]), color=color, lw=2, marker="o", ms=3, label=f"{label}: held out")
        if log["continuation_acc"] and "continuation" in series:
            acc_ax = acc_ax or ax.twinx()
            acc_ax.plot(*zip(*log["continuation_acc"]), color=color, lw=1.5, ls="--", marker="s", ms=3,
                        label=f"{label}: continuation accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/pixel")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    if acc_ax is not None:
        acc_ax.set_ylabel("continuation accuracy (chance 1/8)")
        acc_ax.set_ylim(0, 1)
        h2, n2 = acc_ax.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, fontsize=7, loc="upper center")
    fig.tight_layout()
    write_then_rename(args.out, lambda tmp: fig.savefig(tmp, dpi=110))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
