"""The model zoo: one row per supported backbone, and the defaults every entry point shares.

A row holds everything the engine needs to build the strided ViT, load its weights and run it.
`get_model_spec(name)` is the only way the rest of the package reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import FACET_NAMES
from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # public name, e.g. "dino_vits8"
    family: str  # "dino" | "dinov2" | "dinov3": selects checkpoint layout and position scheme
    patch_size: int  # patch-embedding kernel size p (pixels)
    embed_dim: int  # token width D
    depth: int  # number of transformer blocks
    num_heads: int  # attention heads; head_dim = embed_dim // num_heads
    mlp_ratio: float  # hidden width of the FFN as a multiple of embed_dim
    ffn: str = "mlp"  # "mlp" (fc1-GELU-fc2) | "swiglu" (DINOv2 w12/w3) | "swiglu_dinov3" (w1,w2,w3)
    layerscale: bool = False  # per-channel LayerScale after attention and FFN (ls1/ls2.gamma)
    num_register_tokens: int = 0  # extra prefix tokens after CLS (DINOv2 _reg, DINOv3 storage); dropped like CLS
    pos: str = "learned"  # "learned" (absolute table, bicubic-resampled per size) | "rope" (2-D rotary)
    pos_grid: int = 0  # side of the learned position table's square grid (0 for rope)
    # How the learned table is resampled to another grid, as the model's own interpolate_pos_encoding does:
    # "offset" = bicubic with scale_factor (n + 0.1) / G, no antialias (DINO, DINOv2; SEMANTICS §3);
    # "antialias" = bicubic to size (rows, cols) with antialias=True (DINOv2 _reg: interpolate_offset=0,
    # interpolate_antialias=True in the official hub entries); "size" = the same without antialias (Hugging Face
    # transformers' Dinov2Model; an option: `Extractor(pos_interp="size")`, never a zoo default).
    pos_interp: str = "offset"
    qkv_bias: bool = True  # bias on the fused qkv projection
    norm_eps: float = 1e-6  # LayerNorm epsilon
    rope_base: float = 100.0  # RoPE period base (DINOv3)
    url: str | None = None  # official checkpoint URL (None: gated, weights must come from a local file)
    sha256: str | None = None  # SHA-256 of the official file where one is published (None: recorded on download)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel normalisation mean
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel normalisation std
    saliency_heads: tuple[int, ...] | None = None  # heads averaged for saliency (None: all heads)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def default_stride(self) -> int:
        """The method's stride: half the patch (4 for the /8 models, 7 for /14, 8 for /16); the CLI's default."""
        return self.patch_size // 2

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens


_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"


def _dino(name: str, patch: int, dim: int, heads: int, file: str, saliency=None) -> ModelSpec:
    return ModelSpec(
        name=name, family="dino", patch_size=patch, embed_dim=dim, depth=12, num_heads=heads, mlp_ratio=4.0,
        pos_grid=224 // patch, url=f"{_DINO}/{file}/{file}.pth", saliency_heads=saliency,
    )


def _dinov2(size: str, dim: int, depth: int, heads: int, reg: bool) -> ModelSpec:
    base = f"dinov2_vit{size}14"
    file = f"{base}_reg4_pretrain.pth" if reg else f"{base}_pretrain.pth"
    return ModelSpec(
        name=base + ("_reg" if reg else ""), family="dinov2", patch_size=14, embed_dim=dim, depth=depth,
        num_heads=heads, mlp_ratio=4.0, ffn="swiglu" if size == "g" else "mlp", layerscale=True,
        num_register_tokens=4 if reg else 0, pos_grid=37, pos_interp="antialias" if reg else "offset",
        url=f"{_DINOV2}/{base}/{file}",
    )


def _dinov3(name: str, dim: int, depth: int, heads: int, mlp_ratio: float, ffn: str = "mlp") -> ModelSpec:
    # Official DINOv3 weights are gated (signed URLs): pass weights= a local .pth or timm .safetensors file.
    # As dinov3/hub/backbones.py: layerscale, 4 storage tokens, "layernormbf16" (eps 1e-5), RoPE base 100,
    # qkv bias with the K third masked to zero (mapped in model/dinov3.py), SwiGLU hidden aligned to 8.
    return ModelSpec(
        name=name, family="dinov3", patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
        mlp_ratio=mlp_ratio, ffn=ffn, layerscale=True, num_register_tokens=4, pos="rope", pos_grid=0,
        qkv_bias=True, norm_eps=1e-5, rope_base=100.0, url=None,
    )


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        # DINO (Caron et al. 2021). dino_vits8 saliency heads were hand-picked by Amir et al. for these weights.
        _dino("dino_vits8", 8, 384, 6, "dino_deitsmall8_pretrain", saliency=(0, 2, 4, 5)),
        _dino("dino_vits16", 16, 384, 6, "dino_deitsmall16_pretrain"),
        _dino("dino_vitb8", 8, 768, 12, "dino_vitbase8_pretrain"),
        _dino("dino_vitb16", 16, 768, 12, "dino_vitbase16_pretrain"),
        # DINOv2 (Oquab et al. 2023); _reg = 4 register tokens (Darcet et al. 2023).
        *(
            _dinov2(size, dim, depth, heads, reg)
            for size, dim, depth, heads in [("s", 384, 12, 6), ("b", 768, 12, 12), ("l", 1024, 24, 16),
                                            ("g", 1536, 40, 24)]
            for reg in (False, True)
        ),
        # DINOv3 (Siméoni et al. 2025): RoPE positions, 4 storage tokens, LayerScale.
        _dinov3("dinov3_vits16", 384, 12, 6, 4.0),
        _dinov3("dinov3_vits16plus", 384, 12, 6, 6.0, ffn="swiglu_dinov3"),
        _dinov3("dinov3_vitb16", 768, 12, 12, 4.0),
        _dinov3("dinov3_vitl16", 1024, 24, 16, 4.0),
    ]
}

FACETS = FACET_NAMES  # declared once, in dinofeat.config


def get_model_spec(name: str) -> ModelSpec:
    """Return the zoo row for `name`, or raise an error listing the known names."""
    if not isinstance(name, str) or name not in MODELS:
        raise InputError(f"model={name!r} is not in the model zoo; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def list_models() -> list[str]:
    return list(MODELS)
