"""Markdown tables of a benchmark result (the dict :func:`.runner.run` returns; the plots: :mod:`.plots`).

Every number printed here comes from the result; nothing is computed that was not measured, except ratios,
sums of measured stage times, fractions of the measured floor and fitted exponents, each labelled as such.
"""

from __future__ import annotations

from pathlib import Path

from .summary import find as _find

STAGE_NAMES = {"preprocess": "preprocess", "forward": "ViT forward (keys + saliency)", "log_bin": "log-bin",
               "best_buddies": "Best Buddies", "fg_filter_selection": "foreground filter + selection",
               "end_to_end": "end to end (pair, staged)",
               "end_to_end_public": "end to end, `find_correspondences`"}


# ------------------------------------------------------------------------------------------------ format


def fs(s) -> str:
    """Seconds, human-readable."""
    if s is None:
        return "–"
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def fb(b) -> str:
    if b is None:
        return "–"
    if b >= 2**30:
        return f"{b / 2**30:.2f} GiB"
    return f"{b / 2**20:.0f} MiB"


def fx(r) -> str:
    if r is None:
        return "–"
    if r >= 100:
        return f"{r:,.0f}×"
    return f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


def fp(f) -> str:
    if f is None:
        return "–"
    return f"{100 * f:.1f}%" if f >= 0.001 else f"{100 * f:.3f}%"


def fg(flops) -> str:
    return "–" if not flops else f"{flops / 1e9:,.1f}"


def _t(case) -> str:
    t = case.get("time") or {}
    if not t:
        return "–"
    return f"{fs(t['median_s'])} ({fs(t['p90_s'])})"


# ------------------------------------------------------------------------------------------------ markdown


def markdown(res: dict, images: dict[str, str] | None = None) -> str:
    images = images or {}
    env, cfg, cases = res["environment"], res["config"], res["cases"]
    floor = res["floor"]
    L: list[str] = []
    cpu = env["cpu"]
    gpus = ", ".join(f"{g['name']} (cc {g['compute capability']})" for g in env["gpus"]) or \
        f"none ({env.get('gpu note', '')})"
    m = res["machine"]
    L.append(f"Measured on **{cpu['name']}, {cpu['logical cores']} logical cores** (torch threads "
             f"{m['torch_threads']}), {cpu['memory GB']} GB RAM; GPU: {gpus}. {env['platform']}; python "
             f"{env['python'].split()[0]}, torch {env['torch']}, onnxruntime {env['onnxruntime']}, dinofeat "
             f"{env['dinofeat']} ({env['dinofeat._native']}). Started {res['started_utc']}, wall time "
             f"{res['wall_s'] / 60:.1f} min; load average at start / end: "
             f"{_load(m.get('loadavg_start'))} / {_load(m.get('loadavg_end'))} (the machine is shared).")
    L.append("")
    L.append(f"Command: `{res['command']}`")
    L.append("")
    model = res["model"]
    a, b = res["images"]["a"], res["images"]["b"]
    L.append(f"Model {model['name']}, stride {model['stride']}, layer {model['layer']} {model['facet']}; weights: "
             f"{model['weights']} (sha256 `{model['weights_sha256'][:16]}…`). Images: `{Path(a['path']).name}` "
             f"({a['size_wh'][0]}×{a['size_wh'][1]}) and `{Path(b['path']).name}` "
             f"({b['size_wh'][0]}×{b['size_wh'][1]}).")
    L.append("")
    L.append(f"Protocol: {cfg['warmup']} untimed warm-up call(s), then up to {cfg['repeat']} timed calls (at least "
             f"{cfg['min_repeat']}, fewer once {cfg['budget']:.0f} s were spent); figures are **median (p90)**; "
             "CPU times with `time.perf_counter`, GPU times with CUDA events after `synchronize`. Memory is the "
             "peak RSS growth during the stage (Linux `VmHWM`, reset per stage) and, on GPU, torch's peak "
             "allocation. Stage times come from one staged call per repetition (the body of "
             "`find_correspondences` with a clock mark after each stage).")
    L.append("")
    fr = floor["gemm"]
    parts = [f"{k} {v['rate_flops'] / 1e9:.1f} GFLOP/s" for k, v in fr.items()]
    L.append(f"Floor (measured in this run): best torch GEMM rate {', '.join(parts)}; copy bandwidth "
             f"{floor['copy']['bytes_per_s'] / 1e9:.1f} GB/s. A stage's floor = its matrix-product FLOPs / that "
             "rate; *% of floor* = floor / measured time (100% = at the limit). Log-bin and the selection do "
             "almost no arithmetic: their FLOP floor is near 0 (log-bin's byte floor is in the JSON).")
    L.append("")
    L += _paper(res)
    L += _resolutions(res)
    L += _batches(cases)
    L += _backends(res)
    L += _kernels(cases)
    L += _alternatives(cases)
    L += _scaling(res)
    L += _microbench(res.get("kernels_microbench") or {})
    L += _skipped(res)
    if images:
        L.append("### Plots")
        L.append("")
        for key, title in (("stages", "Stage breakdown at the paper setting"),
                           ("resolution", "Throughput and memory vs resolution"),
                           ("scaling", "Time vs patches T")):
            if key in images:
                L.append(f"![{title}]({images[key]})")
                L.append("")
    return "\n".join(L) + "\n"


def _mem(m: dict) -> str:
    out = fb(m.get("peak_delta_bytes"))
    if m.get("peak_gpu_bytes"):
        out += f" (GPU peak {fb(m['peak_gpu_bytes'])})"
    return out


def _load(v) -> str:
    return "–" if not v else " ".join(f"{x:.1f}" for x in v)


def _paper(res) -> list[str]:
    ps = res.get("paper_setting") or {}
    if not ps:
        return []
    cfg = res["config"]
    L = []
    title = ("Paper setting (ViT-S/8, stride 4, load 224, layer 9 key, log-bin, saliency, Best Buddies, 10 pairs, "
             "thresh 0.05)") if ps.get("is_paper_setting") else f"Pair at load {ps['size']}"
    L.append(f"### {title}")
    L.append("")
    precs = [p for p in cfg["precisions"] if any(f"{p}_s" in r for r in ps["stages"].values())]
    head = ["stage", "baseline (original structure)"]
    for p in precs:
        head += [f"dinofeat {p} median (p90)", f"baseline / {p}"]
    head += ["GFLOP", "fp32 floor", "bf16 floor"] + [f"{p}: % of fp32 / bf16 floor" for p in precs]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    base = res.get("baseline") or {}
    sim = base.get("similarity") or {}
    for stage, row in ps["stages"].items():
        bcell = fs(row.get("baseline_s"))
        if stage in ("best_buddies", "end_to_end", "end_to_end_public") and sim and not sim.get("full"):
            bcell += f" (loop extrapolated from {sim['rows_measured']} measured rows)"
        cells = [STAGE_NAMES.get(stage, stage), bcell]
        for p in precs:
            cells.append(f"{fs(row.get(f'{p}_s'))} ({fs(row.get(f'{p}_p90_s'))})" if row.get(f"{p}_s") else "–")
            cells.append(fx(row.get(f"ratio_baseline_over_{p}")))
        cells += [fg(row.get("flops")), fs(row.get("floor_fp32_s")), fs(row.get("floor_bf16_s"))]
        for p in precs:
            f32, b16 = row.get(f"{p}_fraction_of_floor_fp32"), row.get(f"{p}_fraction_of_floor_bf16")
            cells.append("–" if f32 is None else f"{fp(f32)} / {fp(b16)}")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    lb = [c for c in res["cases"] if c.get("kind") == "stage" and c.get("stage") == "log_bin"
          and c.get("size") == ps["size"] and c.get("precision") == "fp32" and c.get("bytes_floor_s")]
    if lb:
        nbytes = sum(c["bytes"] for c in lb)
        floor_s = sum(c["bytes_floor_s"] for c in lb)
        took = sum(c["time"]["median_s"] for c in lb)
        L.append(f"Log-bin is memory-bound: it must read and write {fb(nbytes)} for the pair, "
                 f"{fs(floor_s)} at the copy bandwidth measured in this run; dinofeat fp32 takes {fs(took)} "
                 f"({fp(floor_s / took)} of that floor).")
        L.append("")
    for p in precs:
        inside = (ps["stages"].get("end_to_end_public") or {}).get(f"{p}_inside")
        if inside:
            L.append(f"Inside `find_correspondences` ({p} extractor; medians per call): preprocess ×2 "
                     f"{fs(inside['preprocess']['median_s'])}, extract ×2 (forward + log-bin) "
                     f"{fs(inside['extract']['median_s'])}, best_buddies {fs(inside['best_buddies']['median_s'])}, "
                     f"select_pairs (k-means + ranking) {fs(inside['select_pairs']['median_s'])}, rest "
                     f"{fs(inside['rest']['median_s'])}.")
            L.append("")
    if ps.get("speedup_fp32"):
        met = "meets" if ps["meets_target"] else "does **not** meet"
        L.append(f"**End to end: dinofeat fp32 {fs(ps['engine_fp32_end_to_end_s'])} "
                 f"({ps['engine_fp32_end_to_end_source']}, median) vs baseline {fs(ps['baseline_end_to_end_s'])} = "
                 f"{fx(ps['speedup_fp32'])} faster** in the same run ({met} the {ps['speedup_target']:.0f}× target).")
        L.append("")
    for p in precs:
        if p == "fp32" or not ps.get(f"engine_{p}_end_to_end_s"):
            continue
        ag = ps.get(f"{p}_agreement_vs_fp32") or {}
        line = (f"**{p} mode** ({p} forward + {p} Best-Buddies GEMM, staged pipeline): "
                f"{fs(ps[f'engine_{p}_end_to_end_s'])}")
        if ps.get(f"speedup_{p}"):
            line += f", {fx(ps[f'speedup_{p}'])} vs baseline"
        if ag:
            line += (f". Accuracy cost vs fp32: Best-Buddies pairs Jaccard {ag['jaccard']:.3f} ({ag['common']} common "
                     f"of {ag['reference_pairs']} fp32 / {ag['pairs']} {p} pairs), nn_1 identical for "
                     f"{fp(ag['nn_1_equal'])} of patches, {ag['points_common']} of {cfg['num_pairs']} "
                     f"returned pairs identical; keys rel. deviation {ag['keys_rel_a']:.1e}, saliency "
                     f"{ag['saliency_abs_a']:.1e}.")
        L.append(line)
        L.append("")
    if base:
        L.append(f"Baseline: {base['note']}. Similarity loop: {fs(sim['measured_s'])} measured on "
                 f"{sim['rows_measured']} of {sim['rows_total']} rows (median {fs(sim['row_median_s'])} per row, "
                 f"p90 {fs(sim['row_p90_s'])}), scaled ×{sim['scale']:.2f} to {fs(sim['extrapolated_s'])}. "
                 f"Baseline peak RSS {fb(base['peak_rss_bytes'])}.")
        ag = base.get("agreement_vs_dinofeat_fp32") or {}
        if ag:
            L.append(f"Baseline vs dinofeat fp32 on the same inputs: descriptors rel. {ag['descriptors1_rel']:.1e} / "
                     f"{ag['descriptors2_rel']:.1e}, saliency {ag['saliency1_abs']:.1e} / {ag['saliency2_abs']:.1e}; "
                     f"sampled rows' argmax = dinofeat nn_1: {ag['sampled_rows_argmax_equal_dinofeat_nn_1']}; "
                     f"nn_1 / nn_2 / best buddies / points equal: {ag['nn_1_equal']} / {ag['nn_2_equal']} / "
                     f"{ag['bbs_mask_equal']} / {ag['points_equal']}"
                     + (" (after the loop: stand-in similarity)" if not sim.get("full") else "") + ".")
        gc = base.get("golden_check")
        if gc:
            L.append(f"Baseline vs the original's golden outputs: descriptors rel. {gc['descriptors1_rel']:.1e} / "
                     f"{gc['descriptors2_rel']:.1e}, saliency {gc['saliency1_abs']:.1e}.")
        L.append("")
    return L


def _resolutions(res) -> list[str]:
    cases = res["cases"]
    sizes = res["config"]["sizes"]
    L = ["### Resolutions (torch backend, batch 1)", "",
         "| load | T (A / B) | precision | preprocess A | forward A | log-bin A | Best Buddies | fg + selection | "
         "pair end to end | pairs/s | images/s (A) | forward A % of fp32 / bf16 floor | pair % of fp32 / bf16 floor "
         "| peak RSS growth (pair) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        for p in res["config"]["precisions"]:
            e2e = _find(cases, kind="stage", stage="end_to_end", size=size, precision=p)
            if not e2e:
                continue
            e2e = e2e[0]

            def st(stage, image, p=p, size=size):
                c = _find(cases, kind="stage", stage=stage, size=size, precision=p, image=image)
                return c[0] if c else {}

            img = _find(cases, kind="images", stage="image_end_to_end", size=size, precision=p, image="a",
                        source="staged pipeline")
            fwd = st("forward", "a")
            L.append(f"| {size} | {e2e['T'][0]} / {e2e['T'][1]} | {p} | {_t(st('preprocess', 'a'))} | {_t(fwd)} | "
                     f"{_t(st('log_bin', 'a'))} | {_t(st('best_buddies', 'pair'))} | "
                     f"{_t(st('fg_filter_selection', 'pair'))} | {_t(e2e)} | {e2e['pairs_per_s']:.3f} | "
                     f"{img[0]['images_per_s']:.3f} | {fp(fwd.get('fraction_of_floor_fp32'))} / "
                     f"{fp(fwd.get('fraction_of_floor_bf16'))} | {fp(e2e.get('fraction_of_floor_fp32'))} / "
                     f"{fp(e2e.get('fraction_of_floor_bf16'))} | {_mem(e2e['memory'])} |" if img else "")
    pub = _find(cases, kind="e2e_public")
    if pub:
        L.append("")
        L.append("Public `find_correspondences` (end to end, same extractor, warm): " + "; ".join(
            f"load {c['size']} {c['precision']}: {_t(c)}, {c['pairs_per_s']:.3f} pairs/s, points identical to the "
            f"staged pipeline: {c['points_equal_staged']}"
            + ("" if c["precision"] == "fp32" else " (find_correspondences matches in fp32 whatever the extractor's "
               "precision; the staged pipeline uses the same precision for Best Buddies)") for c in pub) + ".")
    L.append("")
    return L


def _batches(cases) -> list[str]:
    sel = _find(cases, kind="images", source="batch pipeline")
    if not sel:
        return []
    L = ["### Images/s by batch size (preprocess + forward + log-bin, image A)", "",
         "| load | precision | batch | time per batch median (p90) | images/s | peak RSS growth |",
         "|---|---|---|---|---|---|"]
    for c in sel:
        L.append(f"| {c['size']} | {c['precision']} | {c['batch']} | {_t(c)} | {c['images_per_s']:.3f} | "
                 f"{fb(c['memory'].get('peak_delta_bytes'))} |")
    L.append("")
    return L


def _backends(res) -> list[str]:
    cases = res["cases"]
    L = ["### Backends (ViT forward of image A: keys of layer 9 + saliency)", "",
         "| load | backend | precision | device (provider) | forward median (p90) | % of fp32 floor | "
         "keys rel. vs torch fp32 | images/s |", "|---|---|---|---|---|---|---|---|"]
    rows = 0
    for size in res["config"]["matrix_sizes"]:
        for p in res["config"]["precisions"]:
            c = _find(cases, kind="stage", stage="forward", size=size, precision=p, image="a")
            img = _find(cases, kind="images", size=size, precision=p, image="a", source="staged pipeline")
            if c:
                c = c[0]
                L.append(f"| {size} | torch | {p} | {c['device']} | {_t(c)} | {fp(c.get('fraction_of_floor_fp32'))} | "
                         f"{'0 (reference)' if p == 'fp32' else '(see precision agreement)'} | "
                         f"{img[0]['images_per_s']:.3f} |" if img else "")
                rows += 1
        for c in _find(cases, kind="backend", stage="forward", size=size):
            img = _find(cases, kind="backend", stage="image_end_to_end", size=size, backend=c["backend"],
                        precision=c["precision"])
            L.append(f"| {size} | {c['backend']} | {c['precision']} | {c['device']} ({c.get('provider') or '?'}) | "
                     f"{_t(c)} | {fp(c.get('fraction_of_floor_fp32'))} | "
                     f"{c['accuracy']['keys_rel_vs_torch_fp32']:.1e} | "
                     f"{img[0]['images_per_s']:.3f} |" if img else "")
            rows += 1
    skipped = [s for s in res["skipped"] if s["what"].split()[0] in ("onnxruntime", "onnxruntime-cuda",
                                                                     "onnxruntime-trt", "tensorrt", "torch")]
    for s in skipped:
        L.append(f"| – | {s['what']} | | | skipped: {s['reason']} | | | |")
    L.append("")
    return L if rows or skipped else []


def _kernels(cases) -> list[str]:
    sel = _find(cases, kind="kernel")
    if not sel:
        return []
    L = ["### Kernel implementations (on the pipeline's fp32 descriptors)", "",
         "| load | kernel | impl | precision | median (p90) | % of fp32 floor | agreement with the pipeline |",
         "|---|---|---|---|---|---|---|"]
    for c in sel:
        if c["stage"] == "log_bin":
            agree = f"rel. {c['rel_vs_pipeline']:.1e}"
            frac = f"{fp(c.get('fraction_of_bytes_floor'))} of copy-bandwidth floor"
        else:
            a = c["agreement_vs_fp32_pipeline"]
            agree = f"pairs Jaccard {a['jaccard']:.3f}, nn_1 equal {fp(a['nn_1_equal'])}"
            frac = fp(c.get("fraction_of_floor_fp32"))
        L.append(f"| {c['size']} | {c['stage']} | {c['impl']} | {c.get('precision', 'fp32')} | {_t(c)} | {frac} | "
                 f"{agree} |")
    L.append("")
    return L


def _alternatives(cases) -> list[str]:
    sel = _find(cases, kind="alternative")
    if not sel:
        return []
    L = ["### Best Buddies: dinofeat vs what a user would otherwise pick (same descriptors)", "",
         "| load | method | median (p90) | peak RSS growth | % of fp32 floor | mutual pairs vs dinofeat (Jaccard) |",
         "|---|---|---|---|---|---|"]
    for size in sorted({c["size"] for c in sel}):
        ours = _find(cases, kind="stage", stage="best_buddies", size=size, precision="fp32")
        if ours:
            o = ours[0]
            L.append(f"| {size} | dinofeat `best_buddies` (fp32, chunked) | {_t(o)} | "
                     f"{fb(o['memory'].get('peak_delta_bytes'))} | {fp(o.get('fraction_of_floor_fp32'))} | 1 "
                     f"(reference, {o.get('best_buddies')} pairs) |")
        for c in _find(sel, size=size):
            a = c["agreement_vs_dinofeat"]
            L.append(f"| {size} | {c['impl']} | {_t(c)} | {fb(c['memory'].get('peak_delta_bytes'))} | "
                     f"{fp(c.get('fraction_of_floor_fp32'))} | {a['jaccard']:.3f} ({a['pairs']} pairs) |")
    L.append("")
    return L


def _scaling(res) -> list[str]:
    sc = res.get("scaling") or {}
    if not sc:
        return []
    L = ["### Scaling with the number of patches T", "",
         "Exponent k of a least-squares fit of log(time) and log(peak RSS growth) against log(T) over the load sizes "
         "(T of image A for per-image stages, sqrt(T1·T2) for pair stages).", "",
         "| precision | stage | load sizes | T | median time | time exponent | peak RSS growth | memory exponent |",
         "|---|---|---|---|---|---|---|---|"]
    for p, stages in sc.items():
        for stage, s in stages.items():
            te = "–" if s["time_exponent"] is None else f"{s['time_exponent']:.2f}"
            me = "–" if s["memory_exponent"] is None else f"{s['memory_exponent']:.2f}"
            L.append(f"| {p} | {STAGE_NAMES.get(stage, stage)} | {' / '.join(map(str, s['sizes']))} | "
                     f"{' / '.join(f'{t:.0f}' for t in s['T'])} | {' / '.join(fs(t) for t in s['time_s'])} | {te} | "
                     f"{' / '.join(fb(m) for m in s['peak_delta_bytes'])} | {me} |")
    L.append("")
    return L


def _microbench(kb: dict) -> list[str]:
    if not kb:
        return []
    L = ["### Kernel micro-benchmarks (`benchmarks/bench_kernels.py` `run()`, random data, minimum over repeats)", ""]
    if "skipped" in kb:
        return L + [f"Skipped: {kb['skipped']}", ""]
    lb = kb.get("log_bin") or {}
    if lb:
        L.append(f"- log-bin {lb['grid'][0]}×{lb['grid'][1]}×{lb['C']}: C++ {fs(lb.get('cpu_api_s'))}, torch "
                 f"reference {fs(lb.get('reference_torch_s'))}, np.tile of the same output {fs(lb.get('np_tile_s'))}; "
                 f"original per-cell loop on {lb['loop_grid'][0]}×{lb['loop_grid'][1]}: "
                 f"{fs(lb.get('original_loop_small_s'))} vs C++ {fs(lb.get('cpu_small_s'))} "
                 f"({fx(lb.get('speedup_vs_original_small'))}).")
    bb = kb.get("best_buddies") or {}
    if bb:
        L.append(f"- Best Buddies {'×'.join(map(str, bb['shape']))}: C++ {fs(bb.get('cpu_s'))}, dense torch "
                 f"{fs(bb.get('dense_s'))}, matmul alone {fs(bb.get('matmul_only_s'))}; peak extra memory C++ "
                 f"{bb.get('cpu_peak_extra_MB', 0):.0f} MB vs dense {bb.get('dense_peak_extra_MB', 0):.0f} MB.")
    lg = kb.get("best_buddies_large") or {}
    if lg:
        L.append(f"- Best Buddies {'×'.join(map(str, lg['shape']))}: {fs(lg.get('time_s'))}, peak RSS "
                 f"{lg.get('peak_rss_MB', 0):.0f} MB (a dense S would be {lg.get('dense_S_would_be_MB', 0):.0f} MB).")
    sb = kb.get("side_by_side") or {}
    if sb:
        L.append(f"- side by side (same shape, random data): kornia match_mnn {fs(sb.get('kornia_match_mnn_s'))}, "
                 f"faiss IndexFlatIP both ways {fs(sb.get('faiss_flat_ip_both_ways_s'))}.")
    L.append("")
    return L


def _skipped(res) -> list[str]:
    sk = res.get("skipped") or []
    if not sk:
        return []
    L = ["### Skipped here, and why", ""]
    for s in sk:
        L.append(f"- **{s['what']}**: {s['reason']}")
    L.append("")
    return L
