"""PyTorch port of PixelLM's pixel-decoder side, written from the reimplementation spec
(shared/reference/pixellm-spec.md, sections 1.5-1.7 and 2) and checked against the released modules.

Importable pieces (module and parameter names follow the released `hf_model` keys once prefixed with
"model.mask_decoder", "model.prompt_encoder", "model.image_feature_neck", "model.text_hidden_fcs"):

    TwoWayTransformer, TwoWayAttentionBlock, Attention, MLPBlock, MLP, LayerNorm2d
    PositionEmbeddingRandom, PromptEncoder           (pe_layer, no_mask_embed, and the unused SAM pieces)
    MaskDecoderMultiScale                            (2 TwoWayTransformers, shared tokens / upscalers / MLPs)
    make_image_feature_neck(hidden, C)               nn.Sequential: Conv1x1 -> LN2d -> Conv3x3 -> LN2d
    make_text_hidden_fcs(hidden, out_dim)            nn.ModuleList([Sequential(Linear, ReLU, Linear, Dropout(0))])
    LearnedTokenFusion(N, L, C)                      the paper's linear fusion (not in the released code)
    seg_hidden_positions / gather_seg_queries        the SEG gathering math (position before each SEG token)
    fuse_released(h, L)                              the released fixed fusion, weight 1/(N*L) per token
    features_to_grid(feats, g)                       out_mm_projector outputs [L, g*g, H] -> [L, H, g, g]
    decode_low_res(...)                              the 2-level loop -> low-res logits [K, 1, 4g, 4g]
    postprocess_masks(low, input_size, original_size)
    DecoderSide(config)                              all of the above for one config, built in a fixed order

Differences from the released code, all without effect on the released numbers:
* `sigmoid(m_prev)` is broadcast over the channels instead of `repeat_interleave(..., 256)` (the released
  code hard-codes 256 there, so it only runs at C = 256).
* The IoU head and the hypernetwork MLPs 1..3 are built (their weights are in the checkpoint) but not run:
  only mask slot 0 is ever used, so they do not influence any output or gradient.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------
# basic pieces


class LayerNorm2d(nn.Module):
    """Normalises [B, C, H, W] over C at every pixel (SAM's LayerNorm2d, eps 1e-6)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * y + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """lin2(act(lin1(x))); the TwoWayTransformer uses ReLU."""

    def __init__(self, dim, hidden, act=nn.ReLU):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (hypernetwork MLPs, IoU head)."""

    def __init__(self, in_dim, hidden, out_dim, num_layers):
        super().__init__()
        dims_in = [in_dim] + [hidden] * (num_layers - 1)
        dims_out = [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims_in, dims_out)])

    def forward(self, x):
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention whose projections map C -> C / downsample (q, k, v) and back (out)."""

    def __init__(self, dim, heads, downsample=1):
        super().__init__()
        self.heads = heads
        self.internal = dim // downsample
        assert self.internal % heads == 0
        self.q_proj = nn.Linear(dim, self.internal)
        self.k_proj = nn.Linear(dim, self.internal)
        self.v_proj = nn.Linear(dim, self.internal)
        self.out_proj = nn.Linear(self.internal, dim)

    def _heads(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v):
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        d = q.shape[-1]
        p = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(d), dim=-1)
        o = (p @ v).transpose(1, 2)
        b, n = o.shape[0], o.shape[1]
        return self.out_proj(o.reshape(b, n, self.internal))


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim, downsample, skip_first_layer_pe):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, tok, img, tok_pe, img_pe):
        # 1. self-attention of the tokens. The first block uses no PE and (as SAM) *no residual*.
        if self.skip_first_layer_pe:
            tok = self.self_attn(tok, tok, tok)
        else:
            q = tok + tok_pe
            tok = tok + self.self_attn(q, q, tok)
        tok = self.norm1(tok)
        # 2. tokens -> image
        tok = self.norm2(tok + self.cross_attn_token_to_image(tok + tok_pe, img + img_pe, img))
        # 3. MLP on the tokens
        tok = self.norm3(tok + self.mlp(tok))
        # 4. image -> tokens
        img = self.norm4(img + self.cross_attn_image_to_token(img + img_pe, tok + tok_pe, tok))
        return tok, img


class TwoWayTransformer(nn.Module):
    def __init__(self, depth, dim, heads, mlp_dim, downsample=2):
        super().__init__()
        self.layers = nn.ModuleList(
            [TwoWayAttentionBlock(dim, heads, mlp_dim, downsample, i == 0) for i in range(depth)])
        self.final_attn_token_to_image = Attention(dim, heads, downsample)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image, image_pe, tokens):
        """image, image_pe [B, C, h, w]; tokens [B, T, C] (also the token PE) -> ([B, T, C], [B, h*w, C])."""
        img = image.flatten(2).transpose(1, 2)
        img_pe = image_pe.flatten(2).transpose(1, 2)
        tok = tokens
        for layer in self.layers:
            tok, img = layer(tok, img, tokens, img_pe)
        tok = self.norm_final_attn(tok + self.final_attn_token_to_image(tok + tokens, img + img_pe, img))
        return tok, img


# ----------------------------------------------------------------------------------------------------
# prompt encoder


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features: buffer G [2, F] ~ scale * N(0, 1); pe(h, w) [2F, h, w]."""

    def __init__(self, num_feats, scale=None):
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_feats)))

    def encode(self, coords):
        """coords [..., 2] in [0, 1]^2 (x, y) -> [..., 2F] = cat(sin z, cos z), z = 2 pi (2 coords - 1) G."""
        z = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        z = 2 * math.pi * z
        return torch.cat([torch.sin(z), torch.cos(z)], dim=-1)

    def forward(self, size):
        h, w = size
        G = self.positional_encoding_gaussian_matrix
        ones = torch.ones((h, w), dtype=G.dtype)
        y = (ones.cumsum(0) - 0.5) / h
        x = (ones.cumsum(1) - 0.5) / w
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """SAM's PromptEncoder as PixelLM builds it. Only pe_layer and no_mask_embed are used; the point
    embeddings, not_a_point_embed and mask_downscaling exist for the checkpoint."""

    def __init__(self, dim, grid, mask_in_chans):
        super().__init__()
        self.dim = dim
        self.grid = grid
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self):
        return self.pe_layer((self.grid, self.grid)).unsqueeze(0)   # [1, C, g, g]

    def dense(self, k):
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(k, -1, self.grid, self.grid)


# ----------------------------------------------------------------------------------------------------
# mask decoder


class MaskDecoderMultiScale(nn.Module):
    def __init__(self, dim, depth, heads, mlp_dim, levels, num_multimask=3, iou_depth=3, iou_hidden=256,
                 downsample=2):
        super().__init__()
        self.dim = dim
        self.transformer = nn.ModuleList(
            [TwoWayTransformer(depth, dim, heads, mlp_dim, downsample) for _ in range(levels)])
        self.num_mask_tokens = num_multimask + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2), LayerNorm2d(dim // 8), nn.GELU())
        self.upsample_2x = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2), LayerNorm2d(dim), nn.GELU())
        self.pe1 = PositionEmbeddingRandom(dim // 2)
        self.output_hypernetworks_mlps = nn.ModuleList(
            [MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)])
        self.iou_prediction_head = MLP(dim, iou_hidden, self.num_mask_tokens, iou_depth)
        self.level_embed = nn.Embedding(levels, dim)

    def predict_level(self, level, E_l, image_pe, sparse_l, dense, prev_mask=None):
        """One level for K targets.
        E_l [1, C, h, w] neck output; image_pe [1, C, h, w] (level 0; level 1 uses pe1);
        sparse_l [K, 1, C]; dense [K, C, g, g]; prev_mask [K, 1, h', w'] (level > 0).
        Returns the slot-0 mask logits [K, 1, 2h, 2w] (level 0) or [K, 1, 4h, 4w] (level 1)."""
        K = sparse_l.shape[0]
        out_tok = torch.cat([self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat([out_tok.unsqueeze(0).expand(K, -1, -1), sparse_l], 1)
        tokens = tokens + self.level_embed.weight[level].view(1, 1, -1)
        src = E_l.expand(K, -1, -1, -1)
        if level > 0:
            src = self.upsample_2x(src)
            h, w = src.shape[-2:]
            src = (torch.sigmoid(prev_mask.mean(1, keepdim=True)) + 1) * src
            image_pe = self.pe1((h, w)).unsqueeze(0)
            dense = F.interpolate(dense, size=(h, w), mode="bilinear", align_corners=False)
        src = src + dense
        b, c, h, w = src.shape
        pos = image_pe.expand(b, -1, -1, -1)
        hs, keys = self.transformer[level](src, pos, tokens)
        up = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        w0 = self.output_hypernetworks_mlps[0](hs[:, 1])             # [K, C/8]
        _, cu, hu, wu = up.shape
        return (w0.unsqueeze(1) @ up.reshape(b, cu, hu * wu)).reshape(b, 1, hu, wu)


# ----------------------------------------------------------------------------------------------------
# neck, text_hidden_fcs, SEG gathering and fusion


def make_image_feature_neck(hidden, dim):
    return nn.Sequential(
        nn.Conv2d(hidden, dim, kernel_size=1, bias=False), LayerNorm2d(dim),
        nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), LayerNorm2d(dim))


def make_text_hidden_fcs(hidden, out_dim):
    return nn.ModuleList([nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim),
                                        nn.Dropout(0.0))])


def features_to_grid(feats, g):
    """out_mm_projector outputs [L, g*g, H] (row-major patches) -> [L, H, g, g]."""
    L, P, H = feats.shape
    assert P == g * g
    return feats.permute(0, 2, 1).reshape(L, H, g, g)


def seg_hidden_positions(ids, seg_ids):
    """Rows of the hidden states to gather: for every SEG token at position p, p - 1."""
    return [p - 1 for p, t in enumerate(ids) if t in seg_ids]


def fuse_released(h, n_levels):
    """h [K, L, N, C] -> [K, L, C], the released fixed fusion sum_n s h[:, :, n] (same order of adds) with
    s = 1 / len(seg_token_idx) = 1 / (N * L): the released list holds all N * L SEG ids (PixelLM.py:282-287)
    while the loop sums the N tokens of one scale (PixelLM.py:455-458), so a query is half of a mean at N*L = 6."""
    N = h.shape[2]
    s = torch.ones([]) * (1 / (N * n_levels))
    out = h[:, :, 0] * 0
    for n in range(N):
        out = out + s * h[:, :, n]
    return out


class LearnedTokenFusion(nn.Module):
    """The paper's fusion phi as one Linear over the concatenation of the N tokens of a scale:
    q[k, l] = W cat(h[k, l, 0], ..., h[k, l, N-1]) + b, shared by the scales. Initialised to the released
    fusion (W = [I/(N*L) ... I/(N*L)], b = 0), so an untrained model equals the released one."""

    def __init__(self, n, n_levels, dim):
        super().__init__()
        self.n = n
        self.proj = nn.Linear(n * dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.cat([torch.eye(dim) * (1 / (n * n_levels))] * n, dim=1))
            self.proj.bias.zero_()

    def forward(self, h):
        K, L, N, C = h.shape
        return self.proj(h.reshape(K, L, N * C))


def gather_seg_queries(hidden, positions, fcs, n_tokens, n_levels, fusion=None):
    """hidden [T, H] (final-norm LLM states), positions = rows to gather (see seg_hidden_positions).
    Returns (queries [K, L, C] or None, fcs outputs [K*L*N, C] or None, reason or None)."""
    per = n_tokens * n_levels
    if len(positions) == 0:
        return None, None, "no SEG tokens"
    if len(positions) % per != 0:
        return None, None, f"{len(positions)} SEG tokens is not a multiple of {per}"
    h = fcs[0](hidden[positions])
    K = len(positions) // per
    hq = h.reshape(K, n_levels, n_tokens, h.shape[-1])
    q = fuse_released(hq, n_levels) if fusion is None else fusion(hq)
    return q, h, None


# ----------------------------------------------------------------------------------------------------
# decoding and post-processing


def decode_low_res(neck, prompt_encoder, mask_decoder, grid_feats, queries):
    """grid_feats [L, H, g, g] (features_to_grid), queries [K, L, C].
    Returns (low [K, 1, 4g, 4g], [per-level masks], E [L, C, g, g])."""
    E = neck(grid_feats)
    K, L = queries.shape[0], queries.shape[1]
    g = E.shape[-1]
    out = 4 * g
    low = torch.zeros(K, 1, out, out)
    dense = prompt_encoder.dense(K)
    pe0 = prompt_encoder.get_dense_pe()
    levels = []
    prev = None
    for l in range(L):
        m = mask_decoder.predict_level(l, E[l:l + 1], pe0, queries[:, l:l + 1], dense, prev)
        levels.append(m)
        low = low + (1.0 / L) * F.interpolate(m, (out, out), mode="bilinear", align_corners=False)
        prev = m
    return low, levels, E


def postprocess_masks(low, input_size, original_size):
    """low [K, 1, s, s] -> bilinear to max(input_size)^2 -> crop [:h', :w'] -> bilinear to original (H, W).
    input_size = (h', w') of the image after ResizeLongestSide (max(h', w') = the CLIP input size)."""
    t = max(input_size)
    x = F.interpolate(low, (t, t), mode="bilinear", align_corners=False)
    x = x[..., :input_size[0], :input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)


class DecoderSide(nn.Module):
    """The decoder-side modules of one PixelLM config (a dict with the config.json fields). Built in a
    fixed order (prompt encoder, mask decoder, neck, fcs, fusion) so a seed gives the same weights."""

    def __init__(self, cfg):
        super().__init__()
        dc = cfg.get("decoder_config", {})
        self.C = dc.get("prompt_embed_dim", 256)
        self.H = cfg["hidden_size"]
        self.g = cfg["resize_vision_tower_size"] // cfg.get("vision_config", {}).get("patch_size", 14)
        self.N = cfg.get("seg_token_num", 3)
        self.L = cfg.get("image_feature_scale_num", 2)
        self.prompt_encoder = PromptEncoder(self.C, self.g, dc.get("mask_in_chans", 16))
        self.mask_decoder = MaskDecoderMultiScale(
            self.C, dc.get("transformer_depth", 2), dc.get("num_heads", 8), dc.get("mlp_dim", 2048), self.L,
            dc.get("num_multimask_outputs", 3), dc.get("iou_head_depth", 3), dc.get("iou_head_hidden_dim", 256),
            dc.get("attention_downsample_rate", 2))
        self.image_feature_neck = make_image_feature_neck(self.H, self.C)
        self.text_hidden_fcs = make_text_hidden_fcs(self.H, cfg.get("out_dim", 256))
        self.token_fusion = LearnedTokenFusion(self.N, self.L, self.C) if cfg.get("token_fusion", "released") == "learned" else None

    def released_state_dict(self, prefix="model."):
        """Weights under their released names (no learned fusion: it is not part of the released model)."""
        out = {}
        for name in ("mask_decoder", "prompt_encoder", "image_feature_neck", "text_hidden_fcs"):
            for k, v in getattr(self, name).state_dict().items():
                out[prefix + name + "." + k] = v
        return out

    def forward(self, feats, hidden, positions, input_size, original_size):
        """feats [L, g*g, H] out_mm_projector outputs; hidden [T, H]; positions rows to gather.
        Returns a dict of outputs (or {"reason": ...} when there are no masks)."""
        q, h, reason = gather_seg_queries(hidden, positions, self.text_hidden_fcs, self.N, self.L, self.token_fusion)
        if q is None:
            return {"reason": reason}
        low, levels, E = decode_low_res(self.image_feature_neck, self.prompt_encoder, self.mask_decoder,
                                        features_to_grid(feats, self.g), q)
        post = postprocess_masks(low, input_size, original_size)
        return {"fcs": h, "queries": q, "E": E, "levels": levels, "low": low, "post": post}
