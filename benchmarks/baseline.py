"""The baseline: a faithful re-implementation of the original code's *structure* (SEMANTICS.md §1-§7).

What a user of the paper's code (``ShirAmir/dino-vit-features``) runs, rebuilt here step by step so it can be timed
stage by stage on the same weights and inputs as dinofeat:

* DINO's ViT with materialised attention (``(q @ k^T) * scale``, softmax, ``attn_drop``), the patch conv's stride
  set in place and the ``+0.1`` / ``recompute_scale_factor=False`` position-embedding interpolation;
* preprocessing with torchvision ``Resize(load_size, LANCZOS)``, ``ToTensor``, ``Normalize``;
* descriptors from a forward hook on ``blocks[9].attn`` that recomputes the block's qkv; saliency from a second
  forward with a hook on ``blocks[11].attn.attn_drop`` — four full 12-block forwards per pair;
* ``_log_bin`` as a Python double loop over all cells with 17 slice copies each, returning a permuted view;
* ``chunk_cosine_sim``: one ``nn.CosineSimilarity(dim=3)`` per row of image 1 against all of image 2, on the
  non-contiguous permuted views, stacked into a dense (1, 1, T1, T2) similarity;
* ``torch.max`` both ways, best buddies, the foreground filter through ``nn_2``, k-means (scikit-learn,
  ``random_state=0``), the n_clusters-times repeated ranking loop, and the coordinate conversion.

The similarity loop is O(T1 T2 C) with a large constant (about 28 minutes for the paper's pair on 2 cores). By
default :func:`find_correspondences` runs the loop on ``sim_rows`` rows of image 1 spread evenly over all rows
(each row reads the same strided views the full loop reads), times them, and scales the time linearly to all T1
rows; the later stages then run on a stand-in similarity of the same shape, ``normalize(d1) @ normalize(d2).T``
(the spec's §7 measured it equal to the loop's values to 4e-7 relative with identical argmaxes; the sampled rows
are compared with it and the deviation recorded). ``sim_rows=None`` runs the whole loop.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dinofeat.bench.timing import PeakRSS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------- DINO's ViT


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x)), attn


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        y, _ = self.attn(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x))


class OriginalViT(nn.Module):
    """DINO's ``VisionTransformer`` (num_classes=0) for the dino_vits8 family: same parameter names."""

    def __init__(self, patch: int = 8, dim: int = 384, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
                 grid: int = 28, eps: float = 1e-6):
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Identity()

    def interpolate_pos_encoding(self, x, w, h):  # replaced per instance by `patch_vit_resolution`
        raise NotImplementedError

    def prepare_tokens(self, x):
        b, nc, w, h = x.shape  # DINO's names: w is really the height
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        return self.pos_drop(x)

    def forward(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def _fix_pos_enc(patch_size: int, stride_hw: tuple[int, int]):
    """The original's replacement for ``interpolate_pos_encoding`` (SEMANTICS §3), as a function to bind."""

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        class_pos_embed = self.pos_embed[:, 0]
        patch_pos_embed = self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = 1 + (w - patch_size) // stride_hw[1]
        h0 = 1 + (h - patch_size) // stride_hw[0]
        assert w0 * h0 == npatch, f"got wrong grid size for {h}x{w} with patch_size {patch_size} and stride {stride_hw}"
        w0, h0 = w0 + 0.1, h0 + 0.1
        side = int(math.sqrt(n))
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
            mode="bicubic", align_corners=False, recompute_scale_factor=False,
        )
        assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    return interpolate_pos_encoding


def patch_vit_resolution(model: OriginalViT, stride: int, patch: int = 8) -> OriginalViT:
    if stride == patch:
        return model
    assert patch % stride == 0, f"stride {stride} must divide the patch size {patch}"
    model.patch_embed.proj.stride = (stride, stride)
    model.interpolate_pos_encoding = _fix_pos_enc(patch, (stride, stride)).__get__(model, OriginalViT)
    return model


# ------------------------------------------------------------------------------------------ ViTExtractor


class OriginalExtractor:
    """``ViTExtractor`` of the original, restricted to dino_vits8 (what the paper's correspondences use).

    ``timings`` collects the wall time of the forward passes and of ``_log_bin`` separately, so the baseline can be
    split into the same stages as dinofeat; nothing else differs from the original's control flow.
    """

    def __init__(self, state_dict: dict, stride: int = 4, device: str = "cpu"):
        self.model_type = "dino_vits8"
        self.device = device
        model = OriginalViT()
        model.load_state_dict(state_dict)
        self.model = patch_vit_resolution(model.eval().to(device), stride)
        self.p = 8
        self.stride = self.model.patch_embed.proj.stride
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._feats: list = []
        self.hook_handlers: list = []
        self.load_size = None
        self.num_patches = None
        self.timings: dict[str, float] = {}

    def _add_time(self, key: str, dt: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + dt

    def preprocess(self, image_path, load_size=None):
        from torchvision import transforms

        pil_image = Image.open(image_path).convert("RGB")
        if load_size is not None:
            pil_image = transforms.Resize(load_size, interpolation=transforms.InterpolationMode.LANCZOS)(pil_image)
        prep = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=self.mean, std=self.std)])
        return prep(pil_image)[None, ...], pil_image

    def _get_hook(self, facet: str):
        if facet in ("attn", "token"):
            def _hook(model, input, output):
                self._feats.append(output)
            return _hook
        facet_idx = {"query": 0, "key": 1, "value": 2}[facet]

        def _inner_hook(module, input, output):
            input = input[0]
            b, n, c = input.shape
            qkv = module.qkv(input).reshape(b, n, 3, module.num_heads, c // module.num_heads).permute(2, 0, 3, 1, 4)
            self._feats.append(qkv[facet_idx])

        return _inner_hook

    def _register_hooks(self, layers, facet: str) -> None:
        for block_idx, block in enumerate(self.model.blocks):
            if block_idx in layers:
                if facet == "token":
                    self.hook_handlers.append(block.register_forward_hook(self._get_hook(facet)))
                elif facet == "attn":
                    self.hook_handlers.append(block.attn.attn_drop.register_forward_hook(self._get_hook(facet)))
                else:
                    self.hook_handlers.append(block.attn.register_forward_hook(self._get_hook(facet)))

    def _unregister_hooks(self) -> None:
        for handle in self.hook_handlers:
            handle.remove()
        self.hook_handlers = []

    def _extract_features(self, batch, layers, facet: str = "key"):
        b, c, h, w = batch.shape
        self._feats = []
        self._register_hooks(layers, facet)
        t0 = time.perf_counter()
        _ = self.model(batch)
        self._add_time("forward", time.perf_counter() - t0)
        self._unregister_hooks()
        self.load_size = (h, w)
        self.num_patches = (1 + (h - self.p) // self.stride[0], 1 + (w - self.p) // self.stride[1])
        return self._feats

    def _log_bin(self, x: torch.Tensor, hierarchy: int = 2) -> torch.Tensor:
        t0 = time.perf_counter()
        b = x.shape[0]
        num_bins = 1 + 8 * hierarchy
        bin_x = x.permute(0, 2, 3, 1).flatten(start_dim=-2, end_dim=-1)  # B x T x (d*h)
        bin_x = bin_x.permute(0, 2, 1)
        bin_x = bin_x.reshape(b, bin_x.shape[1], self.num_patches[0], self.num_patches[1])
        sub_desc_dim = bin_x.shape[1]
        avg_pools = []
        for k in range(hierarchy):
            win_size = 3**k
            avg_pool = torch.nn.AvgPool2d(win_size, stride=1, padding=win_size // 2, count_include_pad=False)
            avg_pools.append(avg_pool(bin_x))
        bin_x = torch.zeros((b, sub_desc_dim * num_bins, self.num_patches[0], self.num_patches[1])).to(self.device)
        for y in range(self.num_patches[0]):
            for x_ in range(self.num_patches[1]):
                part_idx = 0
                for k in range(hierarchy):
                    kernel_size = 3**k
                    for i in range(y - kernel_size, y + kernel_size + 1, kernel_size):
                        for j in range(x_ - kernel_size, x_ + kernel_size + 1, kernel_size):
                            if i == y and j == x_ and k != 0:
                                continue
                            if 0 <= i < self.num_patches[0] and 0 <= j < self.num_patches[1]:
                                bin_x[:, part_idx * sub_desc_dim:(part_idx + 1) * sub_desc_dim, y, x_] = \
                                    avg_pools[k][:, :, i, j]
                            else:  # replicate padding
                                temp_i = max(0, min(i, self.num_patches[0] - 1))
                                temp_j = max(0, min(j, self.num_patches[1] - 1))
                                bin_x[:, part_idx * sub_desc_dim:(part_idx + 1) * sub_desc_dim, y, x_] = \
                                    avg_pools[k][:, :, temp_i, temp_j]
                            part_idx += 1
        bin_x = bin_x.flatten(start_dim=-2, end_dim=-1).permute(0, 2, 1).unsqueeze(dim=1)
        self._add_time("log_bin", time.perf_counter() - t0)
        return bin_x  # B x 1 x T x (17 * d * h), a permuted (non-contiguous) view

    def extract_descriptors(self, batch, layer: int = 11, facet: str = "key", bin: bool = False,
                            include_cls: bool = False):
        self._extract_features(batch, [layer], facet)
        x = self._feats[0]
        if facet == "token":
            x.unsqueeze_(dim=1)
        if not include_cls:
            x = x[:, :, 1:, :]
        if not bin:
            return x.permute(0, 2, 3, 1).flatten(start_dim=-2, end_dim=-1).unsqueeze(dim=1)
        return self._log_bin(x)

    def extract_saliency_maps(self, batch):
        assert self.model_type == "dino_vits8", "saliency maps are supported only for dino_vits8"
        self._extract_features(batch, [11], "attn")
        head_idxs = [0, 2, 4, 5]
        curr_feats = self._feats[0]  # B x h x t x t
        cls_attn_map = curr_feats[:, head_idxs, 0, 1:].mean(dim=1)
        temp_mins, temp_maxs = cls_attn_map.min(dim=1)[0], cls_attn_map.max(dim=1)[0]
        return (cls_attn_map - temp_mins) / (temp_maxs - temp_mins)


# -------------------------------------------------------------------------------------------- similarity


def chunk_cosine_sim_rows(x: torch.Tensor, y: torch.Tensor, rows) -> tuple[torch.Tensor, list[float]]:
    """The original ``chunk_cosine_sim`` loop body on the given rows of x; also returns each row's time."""
    result_list = []
    row_times = []
    for token_idx in rows:
        t0 = time.perf_counter()
        token = x[:, :, token_idx, :].unsqueeze(dim=2)  # B x 1 x 1 x d'
        result_list.append(torch.nn.CosineSimilarity(dim=3)(token, y))  # B x 1 x t
        row_times.append(time.perf_counter() - t0)
    return torch.stack(result_list, dim=2), row_times  # B x 1 x rows x t


def chunk_cosine_sim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The original, all rows: (B, 1, T1, C) x (B, 1, T2, C) -> (B, 1, T1, T2)."""
    return chunk_cosine_sim_rows(x, y, range(x.shape[2]))[0]


def sample_rows(t1: int, n: int) -> list[int]:
    """n row indices spread evenly over 0..t1-1 (first and last included)."""
    if n >= t1:
        return list(range(t1))
    return sorted({int(round(v)) for v in np.linspace(0, t1 - 1, n)})


def stand_in_similarity(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """(1, 1, T1, T2) float32 cosine similarities from one product of row-normalised contiguous copies."""
    a = d1[0, 0].contiguous()
    b = d2[0, 0].contiguous()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-8)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return (a @ b.T)[None, None]


# ----------------------------------------------------------------------------------- find_correspondences


class _Stages:
    """Wall time and peak-RSS growth of named stages (summed when a stage occurs several times)."""

    def __init__(self):
        self.time: dict[str, float] = {}
        self.peak_delta: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str):
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            yield
            dt = time.perf_counter() - t0
        self.time[name] = self.time.get(name, 0.0) + dt
        delta = max(rss.peak - rss.before, 0)
        self.peak_delta[name] = max(self.peak_delta.get(name, 0), delta)
        self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss.peak)


def find_correspondences(extractor: OriginalExtractor, image_path1, image_path2, num_pairs: int = 10,
                         load_size: int = 224, layer: int = 9, facet: str = "key", bin: bool = True,
                         thresh: float = 0.05, sim_rows: int | None = 64) -> dict:
    """The original ``find_correspondences`` on an :class:`OriginalExtractor`, timed per step.

    Args:
        sim_rows: rows of image 1 to run the similarity loop on (None: all rows, the original's full cost).

    Returns:
        dict with points1/points2 ((y, x) lists), the intermediate tensors (descriptors1/2, saliency_map1/2,
        nn_1, sim_1, nn_2, sim_2, bbs_mask, kmeans_labels), ``steps`` (measured seconds per step), ``peak_delta``
        / ``peak_rss`` (bytes per step) and ``similarity`` (how the similarity was obtained and extrapolated).
    """
    from sklearn.cluster import KMeans

    st = _Stages()
    extractor.timings = {}
    device = extractor.device
    with torch.no_grad():
        with st.stage("preprocess"):
            image1_batch, image1_pil = extractor.preprocess(image_path1, load_size)
        with st.stage("extract"):
            descriptors1 = extractor.extract_descriptors(image1_batch.to(device), layer, facet, bin)
        num_patches1, load_size1 = extractor.num_patches, extractor.load_size
        with st.stage("preprocess"):
            image2_batch, image2_pil = extractor.preprocess(image_path2, load_size)
        with st.stage("extract"):
            descriptors2 = extractor.extract_descriptors(image2_batch.to(device), layer, facet, bin)
        num_patches2, load_size2 = extractor.num_patches, extractor.load_size
        with st.stage("saliency"):
            saliency_map1 = extractor.extract_saliency_maps(image1_batch.to(device))[0]
            saliency_map2 = extractor.extract_saliency_maps(image2_batch.to(device))[0]
        with st.stage("fg_filter"):
            fg_mask1 = saliency_map1 > thresh
            fg_mask2 = saliency_map2 > thresh

        t1 = descriptors1.shape[2]
        rows = list(range(t1)) if sim_rows is None else sample_rows(t1, sim_rows)
        with st.stage("similarity_loop"):
            sims_rows, row_times = chunk_cosine_sim_rows(descriptors1, descriptors2, rows)
        measured = st.time["similarity_loop"]
        sim_info = {"rows_measured": len(rows), "rows_total": t1, "measured_s": measured,
                    "row_median_s": float(np.median(row_times)), "row_p90_s": float(np.percentile(row_times, 90)),
                    "scale": t1 / len(rows), "extrapolated_s": measured * t1 / len(rows),
                    "row_indices": "all" if len(rows) == t1 else f"{len(rows)} rows, np.linspace(0, T1-1) rounded",
                    "full": len(rows) == t1}
        if len(rows) == t1:
            similarities = sims_rows
            sim_info["source"] = "the original loop over all rows"
        else:
            with st.stage("similarity_stand_in"):
                similarities = stand_in_similarity(descriptors1, descriptors2)
            ref = similarities[0, 0, rows]
            got = sims_rows[0, 0]
            sim_info["source"] = ("stand-in: normalize(d1) @ normalize(d2).T (fp32), for the steps after the loop; "
                                  "the loop's time is the measured rows scaled by T1 / rows")
            sim_info["sampled_rows_max_abs_diff_vs_stand_in"] = float((got - ref).abs().max())
            sim_info["sampled_rows_argmax_equal_stand_in"] = bool(torch.equal(got.argmax(dim=1), ref.argmax(dim=1)))
        st.time["similarity_loop"] = sim_info["extrapolated_s"]  # the loop's (scaled) cost, for the stage sums

        with st.stage("best_buddies"):
            image_idxs = torch.arange(num_patches1[0] * num_patches1[1], device=device)
            sim_1, nn_1 = torch.max(similarities, dim=-1)
            sim_2, nn_2 = torch.max(similarities, dim=-2)
            sim_1, nn_1 = sim_1[0, 0], nn_1[0, 0]
            sim_2, nn_2 = sim_2[0, 0], nn_2[0, 0]
            bbs_mask = nn_2[nn_1] == image_idxs

        with st.stage("fg_filter"):
            fg_mask2_new_coors = nn_2[fg_mask2]
            fg_mask2_mask_new_coors = torch.zeros(num_patches1[0] * num_patches1[1], dtype=torch.bool, device=device)
            fg_mask2_mask_new_coors[torch.unique(fg_mask2_new_coors, sorted=False)] = True
            bbs_mask = torch.bitwise_and(bbs_mask, fg_mask1)
            bbs_mask = torch.bitwise_and(bbs_mask, fg_mask2_mask_new_coors)

        with st.stage("selection"):
            bb_descs1 = descriptors1[0, 0, bbs_mask, :].cpu().numpy()
            bb_descs2 = descriptors2[0, 0, nn_1[bbs_mask], :].cpu().numpy()
            all_keys_together = np.concatenate((bb_descs1, bb_descs2), axis=1)
            n_clusters = min(num_pairs, len(all_keys_together))
            length = np.sqrt((all_keys_together**2).sum(axis=1))[:, None]
            normalized = all_keys_together / length
            kmeans = KMeans(n_clusters=n_clusters, random_state=0).fit(normalized)
            bb_topk_sims = np.full((n_clusters), -np.inf)
            bb_indices_to_show = np.full((n_clusters), -np.inf)
            bb_cls_attn1 = saliency_map1[bbs_mask]
            bb_cls_attn2 = saliency_map2[nn_1[bbs_mask]]
            ranks = (bb_cls_attn1 + bb_cls_attn2) / 2
            for _k in range(n_clusters):
                for i, (label, rank) in enumerate(zip(kmeans.labels_, ranks, strict=False)):
                    if rank > bb_topk_sims[label]:
                        bb_topk_sims[label] = rank
                        bb_indices_to_show[label] = i
            indices_to_show = torch.nonzero(bbs_mask, as_tuple=False).squeeze(dim=1)[bb_indices_to_show]
            img1_indices_to_show = torch.arange(num_patches1[0] * num_patches1[1], device=device)[indices_to_show]
            img2_indices_to_show = nn_1[indices_to_show]
            img1_y_to_show = (img1_indices_to_show / num_patches1[1]).cpu().numpy()
            img1_x_to_show = (img1_indices_to_show % num_patches1[1]).cpu().numpy()
            img2_y_to_show = (img2_indices_to_show / num_patches2[1]).cpu().numpy()
            img2_x_to_show = (img2_indices_to_show % num_patches2[1]).cpu().numpy()
            points1, points2 = [], []
            s, p = extractor.stride, extractor.p
            for y1, x1, y2, x2 in zip(img1_y_to_show, img1_x_to_show, img2_y_to_show, img2_x_to_show, strict=False):
                x1_show = (int(x1) - 1) * s[1] + s[1] + p // 2
                y1_show = (int(y1) - 1) * s[0] + s[0] + p // 2
                x2_show = (int(x2) - 1) * s[1] + s[1] + p // 2
                y2_show = (int(y2) - 1) * s[0] + s[0] + p // 2
                points1.append((y1_show, x1_show))
                points2.append((y2_show, x2_show))

    steps = dict(st.time)
    steps["forward"] = extractor.timings.get("forward", 0.0)
    steps["log_bin"] = extractor.timings.get("log_bin", 0.0)
    return {
        "points1": points1, "points2": points2, "image1_pil": image1_pil, "image2_pil": image2_pil,
        "descriptors1": descriptors1, "descriptors2": descriptors2, "saliency_map1": saliency_map1,
        "saliency_map2": saliency_map2, "fg_mask1": fg_mask1, "fg_mask2": fg_mask2, "nn_1": nn_1, "sim_1": sim_1,
        "nn_2": nn_2, "sim_2": sim_2, "bbs_mask": bbs_mask, "kmeans_labels": np.asarray(kmeans.labels_),
        "num_patches1": num_patches1, "num_patches2": num_patches2, "load_size1": load_size1,
        "load_size2": load_size2, "steps": steps, "peak_delta": dict(st.peak_delta), "peak_rss": dict(st.peak_rss),
        "similarity": sim_info, "sampled_rows": rows, "sampled_similarity": sims_rows,
    }


def stage_times(result: dict) -> dict[str, float]:
    """Map the baseline's steps onto dinofeat's stages (seconds; the loop's time is the scaled one).

    preprocess: both images. forward: the four full forwards (two descriptor passes incl. the hook's qkv
    recomputation, two saliency passes). log_bin: both Python loops. best_buddies: similarity loop + the two
    ``torch.max`` passes + the mutual test. fg_filter_selection: masks, filter, k-means, ranking, coordinates.
    """
    s = result["steps"]
    extract_other = s.get("extract", 0.0) - s.get("log_bin", 0.0)  # forward + layout inside extract_descriptors
    forward = extract_other + s.get("saliency", 0.0)
    out = {
        "preprocess": s.get("preprocess", 0.0),
        "forward": forward,
        "log_bin": s.get("log_bin", 0.0),
        "best_buddies": s.get("similarity_loop", 0.0) + s.get("best_buddies", 0.0),
        "fg_filter_selection": s.get("fg_filter", 0.0) + s.get("selection", 0.0),
    }
    out["end_to_end"] = sum(out.values())
    return out
