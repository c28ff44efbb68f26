"""PyTorch reference of the whole PixelLM training forward at a small config (the Swift PixelLMForCausalLM is
tested against it, tools/fixtures/model_full.py -> Tests/PixelModelTests/Fixtures/full.h5).

Pieces:
  * HF CLIPVisionModel (eager) built at the checkpoint size (vision_config.image_size) and run at
    resize_vision_tower_size with the position table resized as the released clip_encoder.py load_model does
    (the off-by-one: the table's *last* row becomes CLS, rows 0..g0*g0-1 are read as the grid), the key mask of
    llava_arch.py encode_images (nearest resize of the pixel validity map, CLS always valid, 0 / finfo.min added
    to every layer), hidden states mm_vision_select_layer (deep) and mm_vision_mid_layer (mid) without CLS;
  * HF LlamaForCausalLM (eager);
  * model.mm_projector / model.out_mm_projector = Sequential(Linear(D, 2H), GELU, Linear(2H, H));
  * the decoder side (mask decoder, prompt encoder, neck, text_hidden_fcs, fusion) from pixellm_torch.py.

The forward is a port of the released training path with the released parameter names:
  * llava_arch.py encode_images + prepare_inputs_labels_for_multimodal, mm_use_im_start_end branch: the one
    IMAGE_TOKEN_INDEX (-200) of each row is replaced by the (g/2)^2 projected image tokens, the attention mask
    is the row's mask before / the LLM image mask / the mask after, labels get IGNORE_INDEX at the image
    positions;
  * llava_llama.py: logits = lm_head(final-norm hidden), CE = CrossEntropyLoss(logits[:, :-1], labels[:, 1:])
    (mean over the non-ignored tokens of the micro-batch);
  * PixelLM.py model_forward: every image is expanded to one copy per conversation (offset), the SEG mask is
    (ids[:, 1:] in SEG ids) ++ False with (g/2)^2 - 1 False entries prepended (the released "hack" with 255
    for 448 px), text_hidden_fcs on the final hidden states, masked select, per image grouped
    [K, L, N, C] and fused with the fixed 1/(N*L) weights (or the learned fusion when configured); the image
    features of the *first* copy of every image go through the neck; the 2-level decoding loop; the
    post-processing to the original size; sigmoid_ce_loss and dice_loss per image summed over masks and
    divided by the micro-batch mask count; total = ce_w CE + bce_w BCE + dice_w DICE (the overlap /
    refinement loss is commented out in the released code and is off here).
Differences from the released code (no effect on the numbers): the grid sizes are taken from the config
instead of the hard-coded 16 / 128 / 255 / 4096 of the 448 px model.

Run with /work/venv/bin/python (torch 2.13 CPU, transformers 5.24).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pixellm_torch as P  # noqa: E402

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
FMIN = torch.finfo(torch.float32).min


# ----------------------------------------------------------------------------------------------------
# the released loss functions (PixelLM.py)


def dice_loss(inputs, targets, num_masks, scale=1000, eps=1e-6):
    inputs = inputs.sigmoid().flatten(1, 2)
    targets = targets.flatten(1, 2)
    numerator = 2 * (inputs / scale * targets).sum(-1)
    denominator = (inputs / scale).sum(-1) + (targets / scale).sum(-1)
    loss = 1 - (numerator + eps) / (denominator + eps)
    return loss.sum() / (num_masks + 1e-8)


def sigmoid_ce_loss(inputs, targets, num_masks):
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.flatten(1, 2).mean(1).sum() / (num_masks + 1e-8)


# ----------------------------------------------------------------------------------------------------
# CLIP


def resize_position_table_reference(w, g0, g):
    """clip_encoder.py load_model: rows 0..g0*g0-1 as the grid (CLS row included, last patch row excluded),
    bilinear to g x g, the old last row appended as the CLS row."""
    D = w.shape[1]
    cls = w[-1:]
    grid = w[:-1].permute(1, 0).reshape(1, D, g0, g0)
    new = F.interpolate(grid, (g, g), mode="bilinear", align_corners=False)[0]
    return torch.cat((new.flatten(-2).permute(1, 0), cls), dim=0)


class CLIPTower(nn.Module):
    """HF CLIPVisionModel at the checkpoint size; `forward` runs it at the resized size with the key mask."""

    def __init__(self, cfg):
        super().__init__()
        vc = cfg["vision_config"]
        vcfg = CLIPVisionConfig(
            hidden_size=vc["hidden_size"], intermediate_size=vc["intermediate_size"],
            num_hidden_layers=vc["num_hidden_layers"], num_attention_heads=vc["num_attention_heads"],
            image_size=vc["image_size"], patch_size=vc["patch_size"], num_channels=vc["num_channels"],
            layer_norm_eps=vc["layer_norm_eps"], hidden_act=vc["hidden_act"], attention_dropout=0.0)
        vcfg._attn_implementation = "eager"
        self.clip = CLIPVisionModel(vcfg).eval()
        self.patch = vc["patch_size"]
        self.S = cfg["resize_vision_tower_size"]
        self.g0 = vc["image_size"] // self.patch
        self.g = self.S // self.patch
        self.select_layer = cfg.get("mm_vision_select_layer", -2)
        self.mid_layer = cfg.get("mm_vision_mid_layer", -11)

    def checkpoint_state_dict(self):
        """HF names of a CLIP checkpoint ("vision_model." prefix; transformers 5 flattened the module)."""
        return {"vision_model." + k: v for k, v in self.clip.state_dict().items()}

    def run_table(self):
        return resize_position_table_reference(self.clip.embeddings.position_embedding.weight, self.g0, self.g)

    def embeddings(self, pixels):
        emb = self.clip.embeddings
        B = pixels.shape[0]
        x = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.reshape(1, 1, -1).expand(B, 1, -1)
        return torch.cat([cls, x], dim=1) + self.run_table().unsqueeze(0)

    def forward(self, pixels, key_mask):
        """pixels [B, 3, S, S], key_mask [B, 1 + g*g] of 1/0 -> (deep, mid) [B, g*g, D]."""
        B, T = key_mask.shape
        inv = 1.0 - key_mask[:, None, None, :].expand(B, 1, T, T)
        mask4 = inv.masked_fill(inv.to(torch.bool), FMIN)
        h = self.clip.pre_layrnorm(self.embeddings(pixels))
        states = [h]
        for layer in self.clip.encoder.layers:
            h = layer(h, mask4)
            if isinstance(h, tuple):
                h = h[0]
            states.append(h)
        return states[self.select_layer][:, 1:], states[self.mid_layer][:, 1:]


# ----------------------------------------------------------------------------------------------------
# the whole model


class PixelLMReference(nn.Module):
    def __init__(self, cfg, seg_token_ids):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = CLIPTower(cfg)
        lcfg = LlamaConfig(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg["num_key_value_heads"], rms_norm_eps=cfg["rms_norm_eps"],
            max_position_embeddings=cfg["max_position_embeddings"], tie_word_embeddings=cfg["tie_word_embeddings"],
            rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]}, attention_dropout=0.0)
        lcfg._attn_implementation = "eager"
        self.llm = LlamaForCausalLM(lcfg)
        H, D = cfg["hidden_size"], cfg["mm_hidden_size"]
        self.mm_projector = nn.Sequential(nn.Linear(D, 2 * H), nn.GELU(), nn.Linear(2 * H, H))
        self.out_mm_projector = nn.Sequential(nn.Linear(D, 2 * H), nn.GELU(), nn.Linear(2 * H, H))
        self.dec = P.DecoderSide(cfg)
        self.seg_token_idx = list(seg_token_ids)
        self.seg_token_num = cfg.get("seg_token_num", 3)
        self.image_feature_scale_num = cfg.get("image_feature_scale_num", 2)
        assert len(self.seg_token_idx) == self.seg_token_num * self.image_feature_scale_num
        self.g = self.vision_tower.g
        self.n_img = (self.g // 2) ** 2
        self.ce_loss_weight, self.bce_loss_weight, self.dice_loss_weight = 1.0, 2.0, 0.5
        # released: python lists of scalar Parameters (so constants, not registered), 1 / len(seg_token_idx)
        # where seg_token_idx lists all N * L SEG ids (model/PixelLM.py:282-287): 1/6, not 1/N
        self.multiseg_scalar = [torch.ones([]) * (1 / len(self.seg_token_idx)) for _ in range(len(self.seg_token_idx))]

    # -- names --------------------------------------------------------------------------------------

    def released_modules(self):
        """(released prefix, module) pairs: the PixelLM checkpoint without the vision tower."""
        out = [("", self.llm), ("model.mm_projector.", self.mm_projector),
               ("model.out_mm_projector.", self.out_mm_projector)]
        for name in ("mask_decoder", "prompt_encoder", "image_feature_neck", "text_hidden_fcs"):
            out.append((f"model.{name}.", getattr(self.dec, name)))
        if self.dec.token_fusion is not None:
            out.append(("model.token_fusion.", self.dec.token_fusion))
        return out

    def released_state_dict(self):
        return {p + k: v for p, m in self.released_modules() for k, v in m.state_dict().items()}

    def released_parameters(self):
        return {p + k: v for p, m in self.released_modules() for k, v in m.named_parameters()}

    @staticmethod
    def released_trainable(name):
        """train_ds.py after PEFT: lm_head, embed_tokens, mask_decoder, text_hidden_fcs and every name with
        mm_projector (both projectors); the learned fusion (not released) is trained too. Frozen: the LLaMA
        layers and final norm (LoRA not modelled), image_feature_neck, prompt_encoder, CLIP."""
        keys = ("lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs", "mm_projector", "token_fusion")
        return any(k in name for k in keys)

    # -- llava_arch.py ------------------------------------------------------------------------------

    def encode_images(self, images, clip_resize_list):
        S, patch = images.shape[-1], self.vision_tower.patch
        vmask = torch.zeros_like(images[:, 0, :, :])
        for i, size in enumerate(clip_resize_list):
            vmask[i, :size[0], :size[1]] = 1
        with torch.no_grad():
            patch_num = S // patch
            vmask = F.interpolate(vmask[:, None], size=(patch_num, patch_num), mode="nearest")[:, 0]
            llm_mask = F.interpolate(vmask[:, None], size=(patch_num // 2, patch_num // 2), mode="nearest")[:, 0]
            llm_mask = llm_mask.flatten(1)
            flat = vmask.flatten(1)
            key_mask = torch.cat((torch.ones(flat.shape[0], 1), flat), dim=-1)
        deep, mid = self.vision_tower(images, key_mask)
        return deep, llm_mask, [mid]

    def prepare_inputs_labels_for_multimodal(self, input_ids, attention_mask, labels, images, clip_resize_list):
        image_features, vit_attention_mask, pre_image_features = self.encode_images(images, clip_resize_list)
        self.last_clip = (image_features, pre_image_features[0])
        pre = [self.out_mm_projector(f) for f in pre_image_features]
        output_image_features = [self.out_mm_projector(image_features)] + pre
        n, l, c = image_features.shape
        p_num = int(l ** 0.5)
        image_features = F.interpolate(image_features.permute(0, 2, 1).reshape(n, c, p_num, p_num),
                                       size=(p_num // 2, p_num // 2), mode="bilinear", align_corners=False)
        image_features = self.mm_projector(image_features.flatten(-2).permute(0, 2, 1))
        embed = self.llm.model.embed_tokens
        new_embeds, new_masks, new_labels = [], [], []
        for b, ids in enumerate(input_ids):
            s = int(torch.where(ids == IMAGE_TOKEN_INDEX)[0][0])
            assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 1
            am, lab = attention_mask[b], labels[b]
            # mm_use_im_start_end: embed(ids[:s]) ++ image ++ embed(ids[s+1:s+2]) ++ embed(rest)
            new_embeds.append(torch.cat([embed(ids[:s]), image_features[b], embed(ids[s + 1:s + 2]),
                                         embed(ids[s + 2:])], 0))
            new_masks.append(torch.cat([am[:s], vit_attention_mask[b].to(am.dtype), am[s + 1:s + 2], am[s + 2:]], 0).bool())
            new_labels.append(torch.cat([lab[:s], torch.full((image_features.shape[1],), IGNORE_INDEX, dtype=lab.dtype),
                                         lab[s + 1:s + 2], lab[s + 2:]], 0))
        assert all(x.shape == new_embeds[0].shape for x in new_embeds)
        return (output_image_features, torch.stack(new_masks), torch.stack(new_embeds), torch.stack(new_labels))

    # -- PixelLM.py model_forward (training path) ---------------------------------------------------

    def forward(self, images_clip, input_ids, labels, attention_masks, offset, masks_list, clip_resize_list):
        """images_clip [B, 3, S, S]; input_ids / labels / attention_masks [Bc, T]; offset [B + 1] cumulative
        conversation counts per image; masks_list[i] [K_i, H_i, W_i]; clip_resize_list[i] = (h', w')."""
        N, L = self.seg_token_num, self.image_feature_scale_num
        seg_mask = torch.zeros_like(input_ids[:, 1:]).bool()
        for t in self.seg_token_idx:
            seg_mask = seg_mask | (input_ids[:, 1:] == t)
        seg_mask = torch.cat([seg_mask, torch.zeros((seg_mask.shape[0], 1)).bool()], dim=1)
        seg_mask = torch.cat([torch.zeros((seg_mask.shape[0], self.n_img - 1)).bool(), seg_mask], dim=1)

        # every image once per conversation
        images, resizes = [], []
        for i in range(len(offset) - 1):
            k = int(offset[i + 1] - offset[i])
            images.append(images_clip[i].unsqueeze(0).expand(k, -1, -1, -1).contiguous())
            resizes.extend([clip_resize_list[i]] * k)
        images = torch.cat(images, 0)

        feats, attn, embeds, new_labels = self.prepare_inputs_labels_for_multimodal(
            input_ids, attention_masks, labels, images, resizes)
        out = self.llm.model(inputs_embeds=embeds, attention_mask=attn.to(torch.int64), use_cache=False)
        hidden = out.last_hidden_state
        logits = self.llm.lm_head(hidden)
        V = logits.shape[-1]
        ce = F.cross_entropy(logits[..., :-1, :].reshape(-1, V), new_labels[..., 1:].reshape(-1),
                             ignore_index=IGNORE_INDEX)

        projected = self.dec.text_hidden_fcs[0](hidden)
        pred = projected[seg_mask]
        counts = seg_mask.int().sum(-1)
        seg_off = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(-1)])[offset]
        queries, proj_per_image = [], []
        for i in range(len(offset) - 1):
            e = pred[seg_off[i]:seg_off[i + 1]]
            assert len(e) % (N * L) == 0
            proj_per_image.append(e)
            e = e.reshape(len(e) // (N * L), L, N, e.shape[-1])
            if self.dec.token_fusion is not None:
                q = self.dec.token_fusion(e)
            else:
                q = e[:, :, 0] * 0
                for n in range(N):
                    q = q + self.multiseg_scalar[n] * e[:, :, n]
            queries.append(q)

        feats = torch.stack(feats, 0)                       # [L, Bc, g*g, H]
        lows, posts, Es = [], [], []
        for i in range(len(offset) - 1):
            first = int(offset[i])
            grid = P.features_to_grid(feats[:, first], self.g)
            low, levels, E = P.decode_low_res(self.dec.image_feature_neck, self.dec.prompt_encoder,
                                              self.dec.mask_decoder, grid, queries[i])
            post = P.postprocess_masks(low, clip_resize_list[i], tuple(masks_list[i].shape[-2:]))
            lows.append(low)
            posts.append(post[:, 0])
            Es.append(E)

        bce = posts[0].sum() * 0
        dice = posts[0].sum() * 0
        num_masks = 0
        for i, (pm, gt) in enumerate(zip(posts, masks_list)):
            assert gt.shape[0] == pm.shape[0], (gt.shape, pm.shape)
            bce = bce + sigmoid_ce_loss(pm, gt, num_masks=gt.shape[0]) * gt.shape[0]
            dice = dice + dice_loss(pm, gt, num_masks=gt.shape[0]) * gt.shape[0]
            num_masks += gt.shape[0]
        bce = bce / (num_masks + 1e-8)
        dice = dice / (num_masks + 1e-8)
        total = self.ce_loss_weight * ce + self.bce_loss_weight * bce + self.dice_loss_weight * dice
        deep, mid = self.last_clip
        return {"total": total, "ce": ce, "bce": bce, "dice": dice, "logits": logits, "hidden": hidden,
                "attention_mask": attn, "labels": new_labels, "deep": deep, "mid": mid, "seg_mask": seg_mask,
                "queries": queries, "projected": proj_per_image, "low": lows, "masks": posts, "E": Es}
