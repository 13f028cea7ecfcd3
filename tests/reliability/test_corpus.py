"""Bad-input corpus (issue 15 §1): every row of `corpus_cases.CASES` through the API and, where it applies, the CLI.

Invalid input: the row's DinofeatError subclass with a message naming the argument (CLI: exit 2, one line on
stderr, no traceback, no output or temp file left). Valid but unusual input: the documented behaviour. The observed
messages are rendered into tests/reliability/README.md; `test_readme_table_is_current` keeps it true (regenerate
with `DINOFEAT_UPDATE_CORPUS=1 python -m pytest tests/reliability/test_corpus.py`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus_cases import (
    CASES,
    LOAD,
    Ctx,
    animated_gif,
    cmyk_jpeg,
    exif_rotated,
    one_torch_thread,  # noqa: F401 - autouse fixture
    palette_transparency,
    png16,
    png_header,
)
from corpus_cases import png_bytes as _png

import dinofeat
from dinofeat.cli import main
from dinofeat.errors import DinofeatError, OutputError

README = Path(__file__).with_name("README.md")
RECORDS: dict[str, dict[str, str]] = {}  # kind -> {"api": message, "cli": stderr line}, for the README table
BY_KIND = {c.kind: c for c in CASES}


@pytest.fixture()
def ctx(tmp_path, vits8_weights_file, extractor, monkeypatch):
    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "cache"))
    return Ctx(tmp_path, vits8_weights_file, extractor)


def _clean(text: str, ctx: Ctx) -> str:
    text = text.replace(str(ctx.tmp), "<tmp>").replace(str(ctx.weights), "<weights>")
    return re.sub(r"\s+", " ", text).strip()


def _record(kind: str, where: str, text: str) -> None:
    RECORDS.setdefault(kind, {})[where] = text


def _leftovers(ctx: Ctx) -> list[str]:
    return sorted(p.name for p in ctx.out.iterdir())


@pytest.mark.parametrize("kind", [c.kind for c in CASES if c.api], ids=str)
def test_api(kind, ctx):
    case = BY_KIND[kind]
    if case.expect is None:
        result = case.api(ctx)
        case.check(result, ctx)
        _record(kind, "api", f"works: {case.note}")
        return
    with pytest.raises(DinofeatError) as err:
        case.api(ctx)
    assert type(err.value) is case.expect or isinstance(err.value, case.expect), type(err.value)
    assert re.search(case.match, str(err.value), re.S), str(err.value)
    assert not (ctx.tmp / "PWNED").exists()
    _record(kind, "api", f"{type(err.value).__name__}: {_clean(str(err.value), ctx)}")


def _run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("kind", [c.kind for c in CASES if c.cli and c.expect], ids=str)
def test_cli(kind, ctx, capsys):
    case = BY_KIND[kind]
    rc, _, err = _run_cli(case.cli(ctx), capsys)
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(case.cli_match or case.match, lines[0], re.S), lines[0]
    assert lines[0].startswith("dinofeat")
    assert _leftovers(ctx) == []  # no output, no temp file
    assert not (ctx.tmp / "PWNED").exists()
    _record(kind, "cli", _clean(lines[0], ctx))


def test_cli_unusual_images_extract_in_one_run(ctx, capsys):
    """The valid-but-unusual files through `dinofeat extract` (one model load for all)."""
    files = {"1x1.png": _png(np.full((1, 1, 3), 200, np.uint8)), "7x7.png": _png(np.zeros((7, 7, 3), np.uint8)),
             "cmyk.jpg": cmyk_jpeg(), "16bit.png": png16(), "palette.png": palette_transparency(),
             "exif.jpg": exif_rotated(), "anim.gif": animated_gif()}
    paths = [ctx.file(name, data) for name, data in files.items()]
    out = ctx.out / "f.npz"
    rc, stdout, err = _run_cli(["extract", *paths, "--weights", ctx.weights, "--load-size", LOAD, "--saliency",
                                "-o", out, "-q"], capsys)
    assert rc == 0, err
    data = np.load(out)
    grids = [tuple(data[f"num_patches_{i}"]) for i in range(len(paths))]
    # 16x16 -> 3x3; cmyk 24x30 -> 16x20 -> 3x4; 16-bit 20x30 -> 16x24 -> 3x5; exif displayed 20x36 -> 28x16 -> 6x3
    assert grids == [(3, 3), (3, 3), (3, 4), (3, 5), (3, 3), (6, 3), (3, 3)], grids
    assert all(np.isfinite(data[f"descriptors_{i}"]).all() for i in range(len(paths)))
    assert _leftovers(ctx) == ["f.npz"]
    for kind in ("image_1x1", "image_7x7", "cmyk_jpeg", "png_16bit", "palette_transparency", "exif_rotated",
                 "animated_gif"):
        _record(kind, "cli", "works (`dinofeat extract`, exit 0)")


# ------------------------------------------------------------------------------------------------ full disk
def _enospc_after_some_bytes(tmp, arrays=None):
    with open(tmp, "wb") as f:
        f.write(b"partial bytes")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_api_keeps_old_file(tmp_path):
    from dinofeat.viz import atomic_save

    target = tmp_path / "result.npz"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match=r"No space left on device.*previous file is unchanged") as err:
        atomic_save(target, _enospc_after_some_bytes, "--save")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]
    _record("full_disk", "api", "OutputError: " + str(err.value).replace(str(tmp_path), "<tmp>"))


def test_full_disk_cli_keeps_old_file(ctx, capsys, monkeypatch):
    import dinofeat.cli.match as cli

    target = ctx.out / "f.npz"
    target.write_bytes(b"old")
    monkeypatch.setattr(cli, "_savez", _enospc_after_some_bytes)
    rc, _, err = _run_cli(["extract", ctx.img, "--weights", ctx.weights, "--load-size", 8, "-o", target, "-q"],
                          capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err, err
    assert target.read_bytes() == b"old" and _leftovers(ctx) == ["f.npz"]
    _record("full_disk", "cli", _clean(err, ctx))


# ------------------------------------------------------------------------------------------------ permissions
_CHILD = r"""
import contextlib, io, json, sys
from dinofeat.cli import main
from dinofeat.engine.preprocess import load_image
from dinofeat.viz import atomic_save
root, weights, img = sys.argv[1:4]
res = {}
for key, call in (("unreadable_api", lambda: load_image(root + "/secret.png")),
                  ("readonly_api", lambda: atomic_save(root + "/ro/sub/out.npz", lambda t: open(t, "wb").write(b"x")))):
    try:
        call()
    except Exception as e:
        res[key] = type(e).__name__ + ": " + str(e)
args = ["--weights", weights, "--load-size", "16", "-q"]
for key, argv in (("unreadable_cli", ["match", root + "/secret.png", img, "-o", root + "/ok/m.png", *args]),
                  ("readonly_cli", ["match", img, img, "-o", root + "/ro/sub/m.png", *args])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        res[key] = [main(argv), err.getvalue()]
print(json.dumps(res), flush=True)
sys.exit(main(["match", root + "/bomb.png", img, "-o", root + "/ok/m.png", *args]))  # real stderr, real exit code
"""


def _unprivileged() -> list[str]:
    """Command prefix that makes file permissions real: as root, drop the capabilities that bypass them.

    Root ignores chmod (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH); `setpriv` (util-linux) removes both from the
    bounding set, so the child, still uid 0, is denied a mode-000 file and a mode-555 directory like any user.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root needs util-linux `setpriv` to test permissions for real"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_file_and_read_only_directory(tmp_path, vits8_weights_file):
    """Real permissions (mode 000 file, mode 555 directory) through the API and the CLI in a child process, whose
    last command (a decompression bomb) checks the CLI contract on a real process's stderr and exit code."""
    root = tmp_path
    (root / "secret.png").write_bytes(_png(np.zeros((20, 20, 3), np.uint8)))
    os.chmod(root / "secret.png", 0o000)
    (root / "ro").mkdir()
    os.chmod(root / "ro", 0o555)
    (root / "ok").mkdir()
    img = root / "img.png"
    img.write_bytes(_png(np.zeros((20, 20, 3), np.uint8)))
    (root / "bomb.png").write_bytes(png_header(60000, 60000))
    try:
        proc = subprocess.run([*_unprivileged(), sys.executable, "-c", _CHILD, str(root), str(vits8_weights_file),
                               str(img)], capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(root / "ro", 0o755)
        os.chmod(root / "secret.png", 0o644)
    # the last call's contract in a real process: exit code 2, one line on the real stderr, no traceback
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "DINOFEAT_MAX_IMAGE_PIXELS" in proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    for key in ("unreadable_cli", "readonly_cli"):
        rc, err = found[key]
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        found[key] = err.strip()
    assert re.search(r"InputError: image: cannot read .*secret\.png.*Permission denied", found["unreadable_api"])
    assert re.search(r"IMG1: cannot read .*secret\.png.*Permission denied", found["unreadable_cli"])
    assert re.search(r"OutputError: output .*ro/sub/out\.npz.*(not writable|Permission denied)",
                     found["readonly_api"])
    assert re.search(r"-o/--output .*ro/sub/m\.png.*not writable", found["readonly_cli"])
    assert not (root / "ok" / "m.png").exists() and list((root / "ro").iterdir()) == []
    for key, kind in (("unreadable", "unreadable_file"), ("readonly", "output_read_only_parent")):
        _record(kind, "api", found[f"{key}_api"].replace(str(root), "<tmp>"))
        _record(kind, "cli", found[f"{key}_cli"].replace(str(root), "<tmp>"))


def test_limits_can_be_raised_by_environment(monkeypatch, extractor):
    from dinofeat.limits import DEFAULT_LIMITS, current_limits

    assert current_limits() == DEFAULT_LIMITS
    thin = np.zeros((1, 400, 3), np.uint8)  # at load 16: 16x6400 px, 3x1599 = 4797 tokens
    monkeypatch.setenv("DINOFEAT_MAX_TOKENS", "4000")
    with pytest.raises(dinofeat.InputError, match="4,797 tokens, above the token budget of 4,000"):
        extractor.preprocess(thin, 16)
    monkeypatch.setenv("DINOFEAT_MAX_TOKENS", "5000")
    assert tuple(extractor.preprocess(thin, 16)[0].shape) == (1, 3, 16, 6400)
    monkeypatch.setenv("DINOFEAT_MAX_IMAGE_PIXELS", "399")
    with pytest.raises(dinofeat.InputError, match="400x1 = 400 pixels"):
        extractor.preprocess(thin, 16)
    monkeypatch.setenv("DINOFEAT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(dinofeat.InputError, match="DINOFEAT_MAX_IMAGE_PIXELS='lots': expected a positive integer"):
        current_limits()


def test_pillow_warning_level_below_our_limit_is_quiet(tmp_path, monkeypatch):
    """Pillow warns above its MAX_IMAGE_PIXELS (89.5 MP) and refuses above twice that; dinofeat's own limit (100 MP)
    decides instead: an image between Pillow's warning level and ours loads without a DecompressionBombWarning.
    Pillow's level is lowered here so that a 40x40 image stands for a 95 MP photo."""
    import warnings

    from PIL import Image

    from dinofeat.engine.preprocess import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(path)  # 1,600 px: above Pillow's 1,000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        im = load_image(path)
    assert im.size == (40, 40) and np.asarray(im)[0, 0, 0] == 7
    with warnings.catch_warnings():  # Pillow's own check warns here (the quiet path is load_image's)
        warnings.simplefilter("error")
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(path)
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(tmp_path / "huge.png")  # above 2x: Pillow refuses
    with pytest.raises(dinofeat.InputError, match="decompression-bomb guard"):
        load_image(tmp_path / "huge.png")


# ------------------------------------------------------------------------------------------------ corrupt caches
def test_corrupt_cache_entries_are_rebuilt_not_used(tmp_path, extractor):
    """A cached ONNX graph / TensorRT engine whose bytes changed fails its SHA-256: deleted, so rebuilt, never used.

    The entries are the real keys `get_onnx` computes; the rebuild of a corrupted ONNX entry is exercised (once, an
    export costs seconds) by `test_concurrency.py::test_processes_share_cache`."""
    import warnings

    from dinofeat.export import cache
    from dinofeat.export.onnx import graph_spec
    from dinofeat.model.vit import Request

    vit, req, sha = extractor.backend.model, Request(facets=((0, "key"),)), extractor.weights_sha256
    # The entry get_onnx would look up (same key), holding a graph whose bytes were changed after it was stored.
    spec = graph_spec(vit, req, 16, 16, "fp32", sha)
    key = cache.make_key(spec.cache_fields("plain"))
    name = f"dino_vits8_s4_16x16_fp32_plain_{key}.onnx"
    cache.store(tmp_path / "onnx", key, {name: b"a graph"}, {"onnx": name})
    (tmp_path / "onnx" / name).write_bytes(b"a grap\x00")
    with pytest.warns(RuntimeWarning, match="fails its SHA-256") as rec:
        assert cache.lookup(tmp_path / "onnx", key) is None  # get_onnx's first step: then it exports again
    assert not (tmp_path / "onnx" / name).exists()
    _record("corrupt_onnx_cache", "api", "rebuilt, not used (the rebuild itself, by 4 racing processes: "
            "test_concurrency.py): RuntimeWarning: "
            + str(rec[0].message).replace(str(tmp_path), "<tmp>").replace(key, "<key>"))
    trt_dir = tmp_path / "trt"
    cache.store(trt_dir, "k", {"m_k.engine": b"serialized engine"}, {"engine": "m_k.engine"})
    (trt_dir / "m_k.engine").write_bytes(b"serialized engin\x00")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup(trt_dir, "k") is None  # what get_engine sees: it builds a new engine
    assert not (trt_dir / "m_k.engine").exists() and not (trt_dir / "k.json").exists()
    _record("corrupt_tensorrt_engine", "api", "rebuilt, not used (`get_engine`'s lookup): RuntimeWarning: "
            + str(rec[0].message).replace(str(tmp_path), "<tmp>"))


# ------------------------------------------------------------------------------------------------ README table
EXTRA_ROWS = {  # kinds tested above outside the table: (group, given)
    "unreadable_file": ("image file", "PNG with mode 000 (read as an unprivileged user)"),
    "output_read_only_parent": ("output", "output directory under a mode-555 directory (unprivileged user)"),
    "full_disk": ("output", "write raising ENOSPC after some bytes (patched)"),
    "corrupt_onnx_cache": ("cache", "cached ONNX graph whose bytes changed after it was stored"),
    "corrupt_tensorrt_engine": ("cache", "cached TensorRT engine entry with changed bytes"),
}


def render_table(records: dict) -> str:
    rows = [(c.kind, c.group, c.given, c.expect) for c in CASES]
    rows += [(k, g, given, None) for k, (g, given) in EXTRA_ROWS.items()]
    out = ["| # | kind | group | input | API | CLI (`dinofeat ...`, stderr) |", "|---|---|---|---|---|---|"]
    for i, (kind, group, given, _) in enumerate(rows, 1):
        rec = records.get(kind, {})
        cells = [rec.get("api", "n/a (CLI only)"), rec.get("cli", "n/a (API only)")]
        cells = [c.replace("|", "\\|") for c in cells]
        out.append(f"| {i} | `{kind}` | {group} | {given} | {cells[0]} | {cells[1]} |")
    return "\n".join(out) + "\n"


BEGIN, END = "<!-- corpus table: generated by test_corpus.py -->", "<!-- end of corpus table -->"


def test_readme_table_is_current():
    """Runs last in this module: the README's table equals the messages observed in this run."""
    expected_kinds = {c.kind for c in CASES} | set(EXTRA_ROWS)
    missing = expected_kinds - set(RECORDS)
    if missing:  # a -k selection: the table cannot be checked from a partial run
        pytest.xfail(f"partial run, {len(missing)} kinds not recorded")
    table = render_table(RECORDS)
    text = README.read_text()
    if os.environ.get("DINOFEAT_UPDATE_CORPUS") == "1":
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        README.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
        text = README.read_text()
    assert f"{BEGIN}\n{table}{END}" in text, "tests/reliability/README.md is stale: rerun with DINOFEAT_UPDATE_CORPUS=1"
    assert len(expected_kinds) >= 40


@pytest.mark.gpu
def test_device_inputs_are_not_checked_and_cost_no_host_sync():
    """NaN/Inf in CUDA inputs: not checked (the check would synchronise); the documented behaviour."""
    import torch

    from dinofeat.kernels import _arrays

    x = torch.full((4, 6), float("nan"), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _arrays.check_finite("desc", x)  # returns without a host sync (set_sync_debug_mode would raise)
    finally:
        torch.cuda.set_sync_debug_mode("default")
