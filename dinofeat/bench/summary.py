"""Summaries of a run's cases: the paper setting (per-stage table, speed-up over the baseline, agreement of the
reduced precisions) and the scaling exponents (time and memory ~ T^k)."""

from __future__ import annotations

from . import flops as FL
from .measures import fit_exponent
from .settings import PAPER, SPEEDUP_TARGET, Config

STAGES = ("preprocess", "forward", "log_bin", "best_buddies", "fg_filter_selection", "end_to_end")


def find(cases, **keys) -> list[dict]:
    return [c for c in cases if all(c.get(k) == v for k, v in keys.items())]


def engine_stage_times(cases, size: int, precision: str) -> dict[str, dict]:
    """Per-stage median (and p90) for the pair at `size`: image stages summed over both images."""
    out = {}
    for stage in STAGES:
        sel = find(cases, kind="stage", stage=stage, size=size, precision=precision, batch=1)
        if not sel:
            continue
        out[stage] = {"median_s": sum(c["time"]["median_s"] for c in sel),
                      "p90_s": sum(c["time"]["p90_s"] for c in sel), "n": min(c["time"]["n"] for c in sel),
                      "flops": sum(c.get("flops", 0) or 0 for c in sel) or None,
                      "peak_delta_bytes": max((c.get("memory", {}).get("peak_delta_bytes") or 0) for c in sel)}
    return out


def paper_summary(cfg: Config, cases, baseline: dict, agreement: dict, rates: dict) -> dict:
    size = cfg.baseline_size if cfg.baseline_size in cfg.sizes else (cfg.sizes[0] if cfg.sizes else None)
    if size is None:
        return {}
    is_paper = (cfg.model, cfg.stride, size, cfg.layer, cfg.facet, cfg.num_pairs, cfg.thresh) == (
        PAPER["model"], PAPER["stride"], PAPER["load_size"], PAPER["layer"], PAPER["facet"], PAPER["num_pairs"],
        PAPER["thresh"])
    out: dict = {"size": size, "is_paper_setting": is_paper, "setting": {**PAPER, "load_size": size}}
    per = {p: engine_stage_times(cases, size, p) for p in cfg.precisions}
    pub = {p: find(cases, kind="e2e_public", size=size, precision=p) for p in cfg.precisions}
    stages = {}
    for stage in STAGES:
        row = {}
        if baseline:
            row["baseline_s"] = baseline["stages_s"].get(stage)
        for p, st in per.items():
            if stage in st:
                row[f"{p}_s"] = st[stage]["median_s"]
                row[f"{p}_p90_s"] = st[stage]["p90_s"]
                row[f"{p}_n"] = st[stage]["n"]
                row[f"{p}_peak_delta_bytes"] = st[stage]["peak_delta_bytes"]
                if row.get("baseline_s"):
                    row[f"ratio_baseline_over_{p}"] = row["baseline_s"] / st[stage]["median_s"]
        flops = next((st[stage]["flops"] for st in per.values() if stage in st and st[stage]["flops"]), None)
        if flops:
            row.update(FL.floors(flops, rates))
            for p in cfg.precisions:
                for fk in ("floor_fp32_s", "floor_bf16_s"):
                    if row.get(f"{p}_s") and row.get(fk):
                        row[f"{p}_fraction_of_{fk[:-2]}"] = row[fk] / row[f"{p}_s"]
                if row.get("baseline_s") and row.get("floor_fp32_s"):
                    row["baseline_fraction_of_floor_fp32"] = row["floor_fp32_s"] / row["baseline_s"]
        stages[stage] = row
    row = {}
    for p, cs in pub.items():
        if cs:
            c = cs[0]
            row[f"{p}_s"], row[f"{p}_p90_s"], row[f"{p}_n"] = c["time"]["median_s"], c["time"]["p90_s"], c["time"]["n"]
            row[f"{p}_peak_delta_bytes"] = c["memory"].get("peak_delta_bytes")
            if baseline:
                row["baseline_s"] = baseline["stages_s"]["end_to_end"]
                row[f"ratio_baseline_over_{p}"] = row["baseline_s"] / row[f"{p}_s"]
            if c.get("inside"):
                row[f"{p}_inside"] = c["inside"]
    if row and stages.get("end_to_end", {}).get("flops"):
        row.update(FL.floors(stages["end_to_end"]["flops"], rates))
        for p in cfg.precisions:
            for fk in ("floor_fp32_s", "floor_bf16_s"):
                if row.get(f"{p}_s") and row.get(fk):
                    row[f"{p}_fraction_of_{fk[:-2]}"] = row[fk] / row[f"{p}_s"]
    if row:
        stages["end_to_end_public"] = row
    out["stages"] = stages
    fp32_pub = pub.get("fp32") or []
    e2e_fp32 = fp32_pub[0]["time"]["median_s"] if fp32_pub else stages.get("end_to_end", {}).get("fp32_s")
    out["engine_fp32_end_to_end_s"] = e2e_fp32
    out["engine_fp32_end_to_end_source"] = "find_correspondences" if fp32_pub else "staged pipeline"
    if baseline:
        b = baseline["stages_s"]["end_to_end"]
        out["baseline_end_to_end_s"] = b
        out["baseline_similarity"] = baseline["similarity"]
        if e2e_fp32:
            out["speedup_fp32"] = b / e2e_fp32
            out["speedup_target"] = SPEEDUP_TARGET
            out["meets_target"] = out["speedup_fp32"] >= SPEEDUP_TARGET
    for p in cfg.precisions:
        if p == "fp32" or "end_to_end" not in per.get(p, {}):
            continue
        e = per[p]["end_to_end"]["median_s"]
        out[f"engine_{p}_end_to_end_s"] = e
        if baseline:
            out[f"speedup_{p}"] = baseline["stages_s"]["end_to_end"] / e
        out[f"{p}_agreement_vs_fp32"] = agreement.get(size, {}).get(p)
    return out


def scaling(cases) -> dict:
    """Exponent k of time ~ T^k and memory ~ T^k per stage and precision, from the main pipeline (batch 1)."""
    out: dict = {}
    precisions = sorted({c.get("precision") for c in cases if c.get("kind") == "stage"} - {None})
    for p in precisions:
        for stage in STAGES:
            image = "a" if stage in ("preprocess", "forward", "log_bin") else "pair"
            sel = sorted(find(cases, kind="stage", stage=stage, precision=p, image=image, batch=1),
                         key=lambda c: c["size"])
            if len(sel) < 2:
                continue
            xs = [c["T"] if image == "a" else c["T_pair"] for c in sel]
            ts = [c["time"]["median_s"] for c in sel]
            ms = [(c.get("memory") or {}).get("peak_delta_bytes") for c in sel]
            out.setdefault(p, {})[stage] = {
                "x": "T of image A" if image == "a" else "sqrt(T1 * T2) of the pair",
                "sizes": [c["size"] for c in sel], "T": xs, "time_s": ts, "peak_delta_bytes": ms,
                "time_exponent": fit_exponent(xs, ts), "memory_exponent": fit_exponent(xs, ms)}
    return out
