"""PNG plots of a benchmark result: the stage breakdown at the paper setting, throughput over resolutions, scaling
(matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from .report import STAGE_NAMES, fs
from .summary import find as _find


def plots(res: dict, out: Path, tag: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    ps = res.get("paper_setting") or {}
    cases = res["cases"]
    precs = res["config"]["precisions"]
    machine = f"{res['environment']['cpu']['name']}, {res['environment']['cpu']['logical cores']} cores"
    # 1. stage breakdown at the paper setting (log scale: the baseline is orders of magnitude slower)
    if ps.get("stages"):
        stages = [s for s in ps["stages"] if not s.startswith("end_to_end")] + \
            [s for s in ("end_to_end", "end_to_end_public") if s in ps["stages"]]
        series = [("baseline", "baseline_s", "#999999")] + [(f"dinofeat {p}", f"{p}_s", c) for p, c in
                                                              zip(precs, ("#1f77b4", "#ff7f0e", "#2ca02c"),
                                                                  strict=False)]
        fig, ax = plt.subplots(figsize=(9, 4.8))
        h = 0.8 / len(series)
        for i, (label, key, color) in enumerate(series):
            vals = [ps["stages"][s].get(key) or 0 for s in stages]
            if not any(vals):
                continue
            ys = [j + i * h for j in range(len(stages))]
            ax.barh(ys, vals, height=h, label=label, color=color)
            for y, v in zip(ys, vals, strict=True):
                if v:
                    ax.text(v, y, " " + fs(v), va="center", fontsize=7)
        ax.set_yticks([j + h * (len(series) - 1) / 2 for j in range(len(stages))])
        ax.set_yticklabels([STAGE_NAMES[s] for s in stages])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("seconds (median; log scale)")
        ax.set_title(f"Stages at load {ps['size']} (pair) — {machine}", fontsize=10)
        ax.set_xlim(right=ax.get_xlim()[1] * 8)  # room for the value labels
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        p = out / f"{tag}_stages.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths["stages"] = str(p)
    # 2. throughput and memory vs resolution
    e2e = _find(cases, kind="stage", stage="end_to_end")
    if e2e:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for p in precs:
            sel = sorted(_find(e2e, precision=p), key=lambda c: c["size"])
            if not sel:
                continue
            xs = [c["size"] for c in sel]
            ax1.plot(xs, [c["pairs_per_s"] for c in sel], "o-", label=f"pairs/s torch {p}")
            img = sorted(_find(cases, kind="images", image="a", precision=p, source="staged pipeline"),
                         key=lambda c: c["size"])
            ax1.plot([c["size"] for c in img], [c["images_per_s"] for c in img], "s--", label=f"images/s torch {p}")
        other = _find(cases, kind="backend", stage="image_end_to_end")
        for key in dict.fromkeys((c["backend"], c["precision"]) for c in other):
            sel = sorted((c for c in other if (c["backend"], c["precision"]) == key), key=lambda c: c["size"])
            ax1.plot([c["size"] for c in sel], [c["images_per_s"] for c in sel], "^:",
                     label=f"images/s {key[0]} {key[1]}")
        ax1.set_yscale("log")
        ax1.set_xlabel("load size (shorter side, px)")
        ax1.set_ylabel("per second (log)")
        ax1.set_title("Throughput", fontsize=10)
        ax1.legend(fontsize=7)
        for stage in ("forward", "log_bin", "best_buddies", "end_to_end"):
            image = "a" if stage in ("forward", "log_bin") else "pair"
            sel = sorted(_find(cases, kind="stage", stage=stage, precision="fp32", image=image), key=lambda c: c["size"])
            if sel:
                ax2.plot([c["size"] for c in sel], [(c["memory"].get("peak_delta_bytes") or 0) / 2**20 for c in sel],
                         "o-", label=f"{STAGE_NAMES[stage]}" + (" (A)" if image == "a" else ""))
        if all(v > 0 for line in ax2.get_lines() for v in line.get_ydata()):
            ax2.set_yscale("log")
        ax2.set_xlabel("load size (shorter side, px)")
        ax2.set_ylabel("peak RSS growth (MiB)")
        ax2.set_title("Memory (torch fp32)", fontsize=10)
        ax2.legend(fontsize=7)
        fig.suptitle(machine, fontsize=9)
        fig.tight_layout()
        p = out / f"{tag}_resolution.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths["resolution"] = str(p)
    # 3. scaling (log-log) with fitted exponents
    sc = (res.get("scaling") or {}).get("fp32") or {}
    if sc:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for stage, s in sc.items():
            k = s["time_exponent"]
            ax.plot(s["T"], s["time_s"], "o-", label=f"{STAGE_NAMES[stage]} (k={k:.2f})" if k is not None else stage)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("patches T (image A; pair: sqrt(T1·T2))")
        ax.set_ylabel("median seconds")
        ax.set_title(f"time ∝ T^k, torch fp32 — {machine}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"{tag}_scaling.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths["scaling"] = str(p)
    return paths
