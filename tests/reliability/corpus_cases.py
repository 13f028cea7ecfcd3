"""The bad-input corpus as data: one `Case` per kind of bad or unusual input (files are made by the tests).

Each row says how to reach the input through the API (`api(ctx)`) and, where the CLI can express it, through the
CLI (`cli(ctx)` -> argv for `dinofeat.cli.main`). `expect` is the DinofeatError subclass an invalid input raises
(None: a valid but unusual input, then `check(result, ctx)` asserts the documented behaviour), `match` a regex the
message must contain (the argument's name, what was expected / given). To cover a new command (Matcher, batch
match, apps, serve), add rows whose `api` / `cli` call it; the tests and the README table pick them up.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dinofeat
from dinofeat import kernels
from dinofeat.errors import InputError, OutputError, WeightsError
from dinofeat.model.zoo import MODELS
from dinofeat.testing import deterministic_weights

LOAD = 16  # load size of the corpus: a 3x3 .. 5x5 patch grid at stride 4, milliseconds per image


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread (on a loaded 2-core machine every op otherwise waits ~30 ms at the
    OpenMP barrier for a descheduled second thread). Restored afterwards. Import it into a test module to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Ctx:
    """What a case may use: a fresh folder, a valid image, the weights file, a session Extractor."""

    tmp: Path
    weights: Path
    ex: object
    out: Path = field(init=False)

    def __post_init__(self):
        self.out = self.tmp / "out"
        self.out.mkdir(exist_ok=True)

    @property
    def img(self) -> Path:
        path = self.tmp / "ok.png"
        if not path.exists():
            Image.fromarray(_pattern(40, 52)).save(path)
        return path

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def match_argv(self, img1, img2=None, *extra) -> list[str]:
        return ["match", str(img1), str(img2 or self.img), "--weights", str(self.weights), "--load-size",
                str(LOAD), "-o", str(self.out / "m.png"), "-q", *map(str, extra)]


@dataclass(frozen=True)
class Case:
    kind: str  # unique id (README row, test id)
    group: str  # image file | image array | batch | kernel | argument | checkpoint | cache | output
    given: str  # what the input is, in words
    expect: type | None  # DinofeatError subclass, or None for a valid-but-unusual input
    match: str = ""  # regex the API message (and by default the CLI line) must contain
    api: Callable | None = None  # ctx -> result (raises for invalid inputs)
    cli: Callable | None = None  # ctx -> argv for dinofeat.cli.main (None: the CLI cannot express it)
    cli_match: str | None = None  # regex for the CLI line when it differs from `match`
    check: Callable | None = None  # (result, ctx) -> None, asserts the documented behaviour of a valid input
    note: str = ""  # documented behaviour (README)


# ------------------------------------------------------------------------------------------------ file makers
def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bytes(arr_or_img, **kw) -> bytes:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR for width x height RGB, a tiny IDAT and IEND: 'decompression bomb' header."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def cmyk_jpeg() -> bytes:
    return png_bytes(Image.fromarray(_pattern(24, 30)).convert("CMYK"), format="JPEG", quality=95)


def png16() -> bytes:
    arr = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97).astype(np.uint16)
    return png_bytes(Image.fromarray(arr))


def palette_transparency() -> bytes:
    im = Image.fromarray(_pattern(20, 24)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.info["transparency"] = 0
    return png_bytes(im, transparency=0)


def exif_rotated() -> bytes:
    im = Image.fromarray(_pattern(20, 36))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


@functools.cache
def _base_weights() -> dict:
    return deterministic_weights("dino_vits8")


def _weights_variant(kind: str) -> dict:
    w = dict(_base_weights())
    if kind == "shapes":
        w["blocks.0.attn.qkv.weight"] = torch.zeros(10, 384)
    elif kind == "extra":
        w["blocks.12.attn.qkv.weight"] = torch.zeros(1152, 384)
    elif kind == "missing":
        del w["blocks.3.mlp.fc1.weight"]
    return w


class CodePayload:
    """Unpickling this would create `target` (the side-effect file that must never appear)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def evil_pickle(ctx: Ctx) -> Path:
    path = ctx.tmp / "evil.pth"
    torch.save({"model": {"x": torch.zeros(2)}, "payload": CodePayload(ctx.tmp / "PWNED")}, path)
    return path


# ------------------------------------------------------------------------------------------------ helpers
def pre(ctx: Ctx, image, load_size=LOAD):
    return ctx.ex.preprocess(image, load_size)


def load_weights_file(ctx: Ctx, path):
    from dinofeat.model.weights import load_weights

    return load_weights(MODELS["dino_vits8"], path)


def batch(*shape, fill=0.0, dtype=torch.float32):
    return torch.full(shape, fill, dtype=dtype)


def desc(*shape, fill=None, dtype=np.float32):
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    if fill is not None:
        a.reshape(-1)[min(3, a.size - 1)] = fill
    return a


def fc(ctx, image, **kw):
    kw.setdefault("load_size", LOAD)
    return dinofeat.find_correspondences(image, kw.pop("image2", ctx.img), extractor=ctx.ex, **kw)


_PAIRS: dict = {}


def gray_rgba_pair(ctx: Ctx):
    """One find_correspondences run (gray vs RGBA, num_pairs=1000) shared by the rows that look at it."""
    key = id(ctx.ex)
    if key not in _PAIRS:
        _PAIRS[key] = fc(ctx, _pattern(40, 52)[..., 0], image2=np.dstack([_pattern(40, 52)[::-1],
                                                                         _pattern(40, 52)[..., :1]]), num_pairs=1000)
    return _PAIRS[key]


def _rgb_of(result) -> tuple:
    return tuple(int(v) for v in np.asarray(result[1]).reshape(-1, 3).mean(0).round())


def _check_shape(hw):
    def check(result, ctx):
        b, pil = result
        assert tuple(b.shape) == (1, 3, *hw) and pil.mode == "RGB" and torch.isfinite(b).all()
    return check


def _extract_argv(ctx, path, *extra):
    return ["extract", str(path), "--weights", str(ctx.weights), "--load-size", str(LOAD), "-o",
            str(ctx.out / "f.npz"), "-q", *map(str, extra)]


# ------------------------------------------------------------------------------------------------ the corpus
IMG_READ = r"cannot read .* as an image"

CASES: list[Case] = [
    # ---- image files (API: Extractor.preprocess; CLI: match, checked before the model is loaded)
    Case("empty_file", "image file", "0-byte file named .png", InputError, IMG_READ,
         api=lambda c: pre(c, c.file("e.png", b"")), cli=lambda c: c.match_argv(c.file("e.png", b""))),
    Case("truncated_png", "image file", "PNG cut to half its bytes", InputError, IMG_READ,
         api=lambda c: pre(c, c.file("t.png", c.img.read_bytes()[: len(c.img.read_bytes()) // 2])),
         cli=lambda c: c.match_argv(c.file("t.png", c.img.read_bytes()[: len(c.img.read_bytes()) // 2]))),
    Case("truncated_jpeg", "image file", "JPEG cut after 300 bytes", InputError, IMG_READ,
         api=lambda c: pre(c, c.file("t.jpg", png_bytes(_pattern(64, 64), format="JPEG")[:300])),
         cli=lambda c: c.match_argv(c.file("t.jpg", png_bytes(_pattern(64, 64), format="JPEG")[:300]))),
    Case("text_named_png", "image file", "a text file named .png", InputError, IMG_READ,
         api=lambda c: pre(c, c.file("x.png", b"hello, I am not an image\n")),
         cli=lambda c: c.match_argv(c.file("x.png", b"hello, I am not an image\n"))),
    Case("directory_as_image", "image file", "a directory passed as the image", InputError, "is a directory",
         api=lambda c: pre(c, c.tmp), cli=lambda c: c.match_argv(c.tmp)),
    Case("missing_image", "image file", "a path that does not exist", InputError, "file not found",
         api=lambda c: pre(c, c.tmp / "nope.png"), cli=lambda c: c.match_argv(c.tmp / "nope.png")),
    Case("decompression_bomb", "image file", "60000x60000 PNG header (3.6 Gpx, 100 bytes)", InputError,
         r"above the limit of 100,000,000 pixels.*DINOFEAT_MAX_IMAGE_PIXELS",
         api=lambda c: pre(c, c.file("bomb.png", png_header(60000, 60000))),
         cli=lambda c: c.match_argv(c.file("bomb.png", png_header(60000, 60000)))),
    Case("over_pixel_limit", "image file", "12000x10000 PNG header (120 Mpx, under Pillow's own limit)",
         InputError, r"12000x10000 = 120,000,000 pixels.*DINOFEAT_MAX_IMAGE_PIXELS=N",
         api=lambda c: pre(c, c.file("big.png", png_header(12000, 10000))),
         cli=lambda c: c.match_argv(c.file("big.png", png_header(12000, 10000)))),
    Case("token_budget_1x4000", "image file", "1x4000 image at load_size 224 (12.3 M tokens)", InputError,
         r"12,319,945 tokens, above the token budget of 40,000.*DINOFEAT_MAX_TOKENS",
         api=lambda c: pre(c, c.file("thin.png", png_bytes(_pattern(1, 4000))), 224),
         cli=lambda c: c.match_argv(c.file("thin.png", png_bytes(_pattern(1, 4000))), None, "--load-size", 224)),
    # ---- valid but unusual image files
    Case("image_1x1", "image file", "1x1 PNG", None, api=lambda c: pre(c, c.file("1.png", png_bytes(_pattern(1, 1)))),
         check=_check_shape((LOAD, LOAD)), note="upscaled to load_size x load_size (Lanczos)"),
    Case("image_7x7", "image file", "7x7 PNG (smaller than a patch)", None,
         api=lambda c: pre(c, c.file("7.png", png_bytes(_pattern(7, 7)))), check=_check_shape((LOAD, LOAD)),
         note="upscaled to load_size x load_size"),
    Case("image_1x4000_small_load", "image file", "1x4000 image at load_size 8", None,
         api=lambda c: pre(c, c.file("thin.png", png_bytes(_pattern(1, 4000))), 8), check=_check_shape((8, 32000)),
         note="shorter side -> load_size, longer in proportion: 8x32000 px, 1x7999 tokens (within the budget)"),
    Case("cmyk_jpeg", "image file", "CMYK JPEG", None, api=lambda c: pre(c, c.file("cmyk.jpg", cmyk_jpeg())),
         check=_check_shape((LOAD, 20)), note="converted to RGB by Pillow"),
    Case("png_16bit", "image file", "16-bit grayscale PNG", None, api=lambda c: pre(c, c.file("16.png", png16())),
         check=_check_shape((LOAD, 24)), note="scaled to 8 bits (v >> 8), gray -> RGB"),
    Case("palette_transparency", "image file", "palette PNG with a transparent index", None,
         api=lambda c: pre(c, c.file("pal.png", palette_transparency())), check=_check_shape((LOAD, 19)),
         note="converted to RGB, transparency dropped (as the original's convert('RGB'))"),
    Case("exif_rotated", "image file", "JPEG 36x20 with EXIF orientation 6", None,
         api=lambda c: pre(c, c.file("rot.jpg", exif_rotated())), check=_check_shape((28, LOAD)),
         note="EXIF orientation applied (displayed 20x36 -> resized 16x28); exif_transpose=False keeps the raw order"),
    Case("animated_gif", "image file", "2-frame GIF (red, then blue)", None,
         api=lambda c: pre(c, c.file("anim.gif", animated_gif())),
         check=lambda r, c: _check_shape((LOAD, LOAD))(r, c) or _assert(_rgb_of(r)[0] > 200 and _rgb_of(r)[2] < 50),
         note="the first frame is used"),
    # ---- image arrays (API only)
    Case("noncontiguous_array", "image array", "strided + flipped uint8 view", None,
         api=lambda c: (pre(c, _pattern(40, 52)[::2, ::-1]), pre(c, np.ascontiguousarray(_pattern(40, 52)[::2, ::-1]))),
         check=lambda r, c: _assert(torch.equal(r[0][0], r[1][0])), note="same batch as its contiguous copy"),
    Case("gray_vs_rgba_pair", "image array", "HxW gray image matched with an HxWx4 RGBA image", None,
         api=lambda c: gray_rgba_pair(c),
         check=lambda r, c: _assert(len(r) > 0 and r.image1.mode == r.image2.mode == "RGB"),
         note="mismatched channel counts: both converted to RGB first"),
    Case("float_image_array", "image array", "float32 HxWx3 array", InputError, "expected a uint8 .* got dtype float32",
         api=lambda c: pre(c, _pattern(20, 20).astype(np.float32))),
    Case("chw_image_array", "image array", "3xHxW array", InputError, r"got shape \(3, 20, 24\).*transpose",
         api=lambda c: pre(c, _pattern(20, 24).transpose(2, 0, 1))),
    Case("empty_image_array", "image array", "0x5x3 array", InputError, "empty image",
         api=lambda c: pre(c, np.zeros((0, 5, 3), np.uint8))),
    Case("tensor_as_image", "image array", "a torch tensor passed as the image", InputError, "got a torch.Tensor",
         api=lambda c: pre(c, torch.zeros(3, 20, 20))),
    # ---- preprocessed batches to Extractor.extract (API only)
    Case("batch_nan", "batch", "(1,3,16,16) float32 with a NaN (CPU)", InputError, "batch: contains NaN or Inf",
         api=lambda c: c.ex.extract(_with(batch(1, 3, 16, 16), float("nan")))),
    Case("batch_inf", "batch", "(1,3,16,16) float32 with +inf (CPU)", InputError, "batch: contains NaN or Inf",
         api=lambda c: c.ex.extract(_with(batch(1, 3, 16, 16), float("inf")))),
    Case("batch_int_dtype", "batch", "(1,3,16,16) int64", InputError, "expected float32, got torch.int64",
         api=lambda c: c.ex.extract(batch(1, 3, 16, 16, dtype=torch.int64))),
    Case("batch_wrong_channels", "batch", "(1,4,16,16) float32", InputError, r"expected shape \(B, 3, H, W\)",
         api=lambda c: c.ex.extract(batch(1, 4, 16, 16))),
    Case("batch_numpy", "batch", "a numpy array instead of a tensor", InputError, "expected a .* torch.Tensor",
         api=lambda c: c.ex.extract(np.zeros((1, 3, 16, 16), np.float32))),
    Case("batch_below_patch", "batch", "(1,3,4,4): smaller than the 8-px patch", InputError,
         "smaller than the patch size 8", api=lambda c: c.ex.extract(batch(1, 3, 4, 4))),
    Case("batch_noncontiguous", "batch", "(1,3,16,16) channels-last view", None,
         api=lambda c: (c.ex.extract(torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
                                     .permute(0, 3, 1, 2)),
                        c.ex.extract(torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
                                     .permute(0, 3, 1, 2).contiguous())),
         check=lambda r, c: _assert(torch.equal(r[0].descriptors, r[1].descriptors)),
         note="same descriptors as the contiguous batch"),
    # ---- kernels (API only)
    Case("log_bin_nan", "kernel", "log_bin desc with NaN", InputError, "desc contains NaN at batch 0, row 0",
         api=lambda c: kernels.log_bin(desc(1, 4, 6, fill=np.nan), (2, 2))),
    Case("log_bin_int", "kernel", "log_bin int32 desc", InputError, "desc must be a floating array",
         api=lambda c: kernels.log_bin(np.zeros((1, 4, 6), np.int32), (2, 2))),
    Case("log_bin_grid_mismatch", "kernel", "log_bin T=5 with num_patches (2, 2)", InputError,
         r"num_patches \(Hp, Wp\) = \(2, 2\) gives Hp\*Wp = 4", api=lambda c: kernels.log_bin(desc(1, 5, 6), (2, 2))),
    Case("log_bin_1d", "kernel", "log_bin 1-D desc", InputError, r"desc must have shape \(B, T, C\)",
         api=lambda c: kernels.log_bin(desc(6), (1, 1))),
    Case("log_bin_zero_size", "kernel", "log_bin (1,0,6) and (1,4,0)", None,
         api=lambda c: (kernels.log_bin(desc(1, 0, 6), (0, 0)), kernels.log_bin(desc(1, 4, 0), (2, 2))),
         check=lambda r, c: _assert(r[0].shape == (1, 0, 102) and r[1].shape == (1, 4, 0)
                                    and r[0].dtype == r[1].dtype == np.float32),
         note="typed empty results (float32, (B, T, 17C))"),
    Case("best_buddies_inf", "kernel", "best_buddies desc2 with +inf", InputError, "desc2 contains Inf at row 0",
         api=lambda c: kernels.best_buddies(desc(3, 6), desc(4, 6, fill=np.inf))),
    Case("best_buddies_int", "kernel", "best_buddies int64 tensors", InputError, "desc1 must be a floating array",
         api=lambda c: kernels.best_buddies(torch.zeros(3, 6, dtype=torch.int64), torch.zeros(4, 6, dtype=torch.int64))),
    Case("best_buddies_channels", "kernel", "best_buddies C=6 vs C=7", InputError, "same channel count C",
         api=lambda c: kernels.best_buddies(desc(3, 6), desc(4, 7))),
    Case("best_buddies_3d", "kernel", "best_buddies (1,3,6) array", InputError, r"desc1 must have shape \(T1, C\)",
         api=lambda c: kernels.best_buddies(desc(1, 3, 6), desc(4, 6))),
    Case("best_buddies_list", "kernel", "best_buddies Python lists", InputError, "numpy array, a torch tensor",
         api=lambda c: kernels.best_buddies([[1.0, 2.0]], [[1.0, 2.0]])),
    Case("best_buddies_zero_size", "kernel", "best_buddies T1=0 (numpy) and T2=0 (torch)", None,
         api=lambda c: (kernels.best_buddies(desc(0, 6), desc(4, 6)),
                        kernels.best_buddies(torch.ones(3, 6), torch.ones(0, 6))),
         check=lambda r, c: _assert(r[0].nn_1.shape == (0,) and r[0].nn_1.dtype == np.int64
                                    and (r[0].nn_2 == -1).all() and r[1].mask.dtype == torch.bool
                                    and not r[1].mask.any() and (r[1].nn_1 == -1).all()),
         note="typed empty results: nn = -1, sim = -inf, mask False"),
    # ---- arguments
    Case("num_pairs_zero", "argument", "num_pairs=0", InputError, "num_pairs=0: expected an int >= 1",
         api=lambda c: fc(c, c.img, num_pairs=0), cli=lambda c: c.match_argv(c.img, None, "--num-pairs", 0),
         cli_match="--num-pairs 0: expected an int >= 1"),
    Case("num_pairs_negative", "argument", "num_pairs=-3", InputError, "num_pairs=-3: expected an int >= 1",
         api=lambda c: fc(c, c.img, num_pairs=-3), cli=lambda c: c.match_argv(c.img, None, "--num-pairs", -3),
         cli_match="--num-pairs -3: expected an int >= 1"),
    Case("num_pairs_float", "argument", "num_pairs=2.5", InputError, "num_pairs=2.5: expected an int",
         api=lambda c: fc(c, c.img, num_pairs=2.5), cli=lambda c: c.match_argv(c.img, None, "--num-pairs", 2.5),
         cli_match="--num-pairs: invalid int value: '2.5'"),
    Case("num_pairs_bool", "argument", "num_pairs=True", InputError, "num_pairs=True: expected an int",
         api=lambda c: fc(c, c.img, num_pairs=True)),
    Case("num_pairs_above_buddies", "argument", "num_pairs=1000 (more than the best buddies)", None,
         api=lambda c: gray_rgba_pair(c),
         check=lambda r, c: _assert(0 < len(r) == int(r.bbs_mask.sum()) < 1000),
         note="clamped to the number of foreground best buddies"),
    Case("thresh_nan", "argument", "thresh=NaN", InputError, "thresh=nan: expected a number",
         api=lambda c: fc(c, c.img, thresh=float("nan")), cli=lambda c: c.match_argv(c.img, None, "--thresh", "nan"),
         cli_match=r"--thresh nan: expected a number in \[0, 1\]"),
    Case("thresh_string", "argument", "thresh='high'", InputError, "thresh='high': expected a number",
         api=lambda c: fc(c, c.img, thresh="high"), cli=lambda c: c.match_argv(c.img, None, "--thresh", "high"),
         cli_match="--thresh: invalid float value: 'high'"),
    Case("unknown_model", "argument", "model='vit_huge'", InputError, "model='vit_huge' is not in the model zoo",
         api=lambda c: dinofeat.Extractor(model="vit_huge", weights=str(c.weights)),
         cli=lambda c: c.match_argv(c.img, None, "--model", "vit_huge"),
         cli_match="--model vit_huge is not in the model zoo"),
    Case("unknown_facet", "argument", "facet='keys'", InputError, "facet='keys' is not supported",
         api=lambda c: c.ex.extract(batch(1, 3, 16, 16), facet="keys"),
         cli=lambda c: c.match_argv(c.img, None, "--facet", "keys"), cli_match="--facet: invalid choice: 'keys'"),
    Case("layer_out_of_range", "argument", "layer=12 for a 12-block model", InputError,
         r"layer=12 is out of range for dino_vits8 \(12 blocks\)",
         api=lambda c: c.ex.extract(batch(1, 3, 16, 16), layer=12),
         cli=lambda c: c.match_argv(c.img, None, "--layer", 12),
         cli_match=r"--layer 12 is out of range for dino_vits8 \(12 blocks\)"),
    Case("layer_float", "argument", "layer=9.0", InputError, r"layer=9.0 is out of range",
         api=lambda c: c.ex.extract(batch(1, 3, 16, 16), layer=9.0)),
    Case("stride_not_dividing", "argument", "stride=3 for patch 8", InputError,
         r"stride=3 must be a positive int dividing the patch size 8.*\[1, 2, 4, 8\]",
         api=lambda c: dinofeat.Extractor(stride=3, weights=str(c.weights)),
         cli=lambda c: c.match_argv(c.img, None, "--stride", 3),
         cli_match=r"--stride 3 must be a positive int dividing the patch size 8.*\[1, 2, 4, 8\]"),
    Case("load_size_below_patch", "argument", "load_size=4 (< patch 8)", InputError,
         r"load_size=4: expected an int >= 8", api=lambda c: pre(c, c.img, 4),
         cli=lambda c: c.match_argv(c.img, None, "--load-size", 4),
         cli_match="--load-size 4: expected an int >= 8"),
    # ---- checkpoints (API: load_weights; CLI: match --weights)
    Case("pickle_with_code", "checkpoint", "a .pth whose pickle calls open() (side-effect file)", WeightsError,
         r"pickled Python objects that are not tensors.*never unpickles",
         api=lambda c: load_weights_file(c, evil_pickle(c)),
         cli=lambda c: c.match_argv(c.img, None, "--weights", evil_pickle(c)),
         note="refused by the weights-only unpickler; the side-effect file never appears"),
    Case("truncated_pth", "checkpoint", "the weights file cut to 1 MB", WeightsError, "truncated or corrupted",
         api=lambda c: load_weights_file(c, c.file("cut.pth", c.weights.read_bytes()[:1_000_000])),
         cli=lambda c: c.match_argv(c.img, None, "--weights", c.file("cut.pth", c.weights.read_bytes()[:1_000_000]))),
    *[Case(f"random_bytes_pth_seed{seed}", "checkpoint", f"4096 random bytes named .pth (seed {seed}: {what})",
           WeightsError, "is not a PyTorch checkpoint",
           api=lambda c, s=seed: load_weights_file(c, c.file("r.pth", np.random.default_rng(s).bytes(4096))),
           cli=lambda c, s=seed: c.match_argv(c.img, None, "--weights",
                                                c.file("r.pth", np.random.default_rng(s).bytes(4096))))
      for seed, what in ((0, "UnpicklingError"), (17, "IndexError inside torch"),
                         (54, "UnicodeDecodeError inside torch"))],
    Case("text_named_pth", "checkpoint", "a text file named .pth", WeightsError,
         "is not a PyTorch checkpoint.*a text file",
         api=lambda c: load_weights_file(c, c.file("t.pth", b"just some text\n" * 20)),
         cli=lambda c: c.match_argv(c.img, None, "--weights", c.file("t.pth", b"just some text\n" * 20))),
    Case("safetensors_wrong_shapes", "checkpoint", ".safetensors with a mis-shaped qkv", WeightsError,
         r"blocks\.0\.attn\.qkv\.weight",
         api=lambda c: load_weights_file(c, c.file("s.safetensors", safetensors_bytes(_weights_variant("shapes")))),
         cli=lambda c: c.match_argv(c.img, None, "--weights",
                                    c.file("s.safetensors", safetensors_bytes(_weights_variant("shapes"))))),
    Case("safetensors_extra_keys", "checkpoint", ".safetensors with a 13th block", WeightsError, r"blocks\.12",
         api=lambda c: load_weights_file(c, c.file("x.safetensors", safetensors_bytes(_weights_variant("extra"))))),
    Case("safetensors_missing_keys", "checkpoint", ".safetensors without blocks.3.mlp.fc1.weight", WeightsError,
         r"blocks\.3\.mlp\.fc1\.weight",
         api=lambda c: load_weights_file(c, c.file("m.safetensors", safetensors_bytes(_weights_variant("missing"))))),
    Case("weights_wrong_suffix", "checkpoint", "weights named .npz", WeightsError, r"unsupported file type '\.npz'",
         api=lambda c: load_weights_file(c, c.file("w.npz", b"PK\x03\x04")),
         cli=lambda c: c.match_argv(c.img, None, "--weights", c.file("w.npz", b"PK\x03\x04"))),
    Case("weights_bad_type", "checkpoint", "weights=123", InputError, "weights='int' is not supported",
         api=lambda c: load_weights_file(c, 123)),
    # ---- output paths (API: dinofeat.viz.atomic_save; CLI: match -o / --save, extract -o, export -o)
    Case("output_file_in_the_way", "output", "-o blocked/sub/m.png where 'blocked' is a file", OutputError,
         "is a file in the way|cannot create",
         api=lambda c: _save(c.file("blocked", b"x") / "sub" / "m.npz"),
         cli=lambda c: c.match_argv(c.img)[:-3] + ["-o", str(c.file("blocked", b"x") / "sub" / "m.png"), "-q"]),
    Case("output_is_directory", "output", "-o names an existing directory (.png)", OutputError, "is a directory",
         cli=lambda c: c.match_argv(c.img)[:-3] + ["-o", str(_mkdir(c.tmp / "d.png")), "-q"]),
    Case("output_wrong_suffix_match", "output", "match -o x.gif", InputError, "expected a file ending in .png",
         cli=lambda c: c.match_argv(c.img)[:-3] + ["-o", str(c.out / "x.gif"), "-q"]),
    Case("output_wrong_suffix_save", "output", "match --save x.txt", InputError, r"--save .* ending in \.npz",
         cli=lambda c: c.match_argv(c.img, None, "--save", c.out / "x.txt")),
    Case("output_wrong_suffix_extract", "output", "extract -o f.txt", InputError,
         r"ending in \.npz or \.safetensors", cli=lambda c: _extract_argv(c, c.img)[:-3] + ["-o", str(c.out / "f.txt")]),
    Case("output_wrong_suffix_export", "output", "export -o m.pb", InputError, "expected a .onnx file name",
         cli=lambda c: ["export", "--weights", str(c.weights), "-o", str(c.out / "m.pb"), "-q"]),
    Case("output_missing_directory", "output", "a directory that does not exist yet", None,
         api=lambda c: _save(c.tmp / "new" / "deeper" / "x.npz"),
         check=lambda r, c: _assert(r.is_file() and r.parent.name == "deeper"), note="created, as before"),
    # ---- other CLI arguments
    Case("export_bad_size", "argument", "export --size big", InputError, "--size 'big': expected HxW",
         cli=lambda c: ["export", "--size", "big", "-o", str(c.out / "m.onnx"), "-q"]),
    Case("weights_bad_sha256", "argument", "weights download --sha256 xyz", InputError,
         "sha256='xyz' is not a SHA-256", api=lambda c: _download(c, sha256="xyz"),
         cli=lambda c: ["weights", "download", "dino_vits8", "--url", "http://127.0.0.1:9/w.pth", "--sha256", "xyz"],
         cli_match="--sha256 xyz is not a SHA-256"),
    Case("weights_unreachable_url", "argument", "weights download from a closed local port", WeightsError,
         r"could not download http://127\.0\.0\.1:9/w\.pth",
         api=lambda c: _download(c), cli=lambda c: ["weights", "download", "dino_vits8", "--url",
                                                      "http://127.0.0.1:9/w.pth"]),
    Case("weights_verify_unknown", "argument", "weights verify of a name that is neither model nor file",
         InputError, "is neither a zoo model", cli=lambda c: ["weights", "verify", str(c.tmp / "nope")]),
]


def _assert(cond) -> None:
    if not cond:
        raise AssertionError("documented behaviour not met")


def _with(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[5] = value
    return t


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save(path: Path) -> Path:
    from dinofeat.viz import atomic_save

    return atomic_save(path, lambda tmp: Path(tmp).write_bytes(b"data"))


def _download(ctx: Ctx, **kw):
    from dinofeat.model.weights import download_weights

    return download_weights("dino_vits8", url="http://127.0.0.1:9/w.pth", dest_dir=ctx.tmp / "dl", progress=False,
                            timeout=5, **kw)


def case_ids() -> list[str]:
    return [c.kind for c in CASES]


assert len(set(case_ids())) == len(CASES), "case kinds must be unique"

