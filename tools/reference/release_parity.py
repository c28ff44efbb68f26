"""Parity fixtures from the RELEASED PixelLM code itself (MaverickRen/PixelLM @ ebf0792), not from our port.

Builds a tiny PixelLM with the released classes, the way train_ds.py builds one from a LLaVA base, exports it the
way merge_lora_weights_and_save_hf_model.py does (pytorch_model.bin in bf16 without the vision tower keys, the
config, the tokenizer), reloads it the way chat.py does (fp32), and records what the released code computes:

  * training path (model_forward, labels): 2 images (a landscape one, and a portrait one whose valid width at
    448 px is not a multiple of the patch size), several conversations per image (refCOCO-style single target,
    multi-referring, a MUSE-style text answer), the released collate_fn's ids / labels, every intermediate
    tensor hooks can reach, the released losses (CE, BCE, DICE) on those logits and targets;
  * refCOCO validate path (model_forward(inference=True), one image per call, teacher-forced SEG tokens);
  * MUSE path (evaluate: greedy generation through HF generate, SEG embeddings gathered from the generated
    tokens, masks), several questions per image; one run whose generation stops at the token limit in the
    middle of a SEG group (no masks), one that stops at EOS (a variant of the LM head and embeddings);
  * the LLaVA-base initialisation: the names and shapes of the exported state dict, and which tensors came
    from the base.

The model is tiny but keeps what the release hard-codes: CLIP at 448 px with patch 14 (32 x 32 grid, 256 LLM
image tokens, the "255" SEG-mask shift, 1024-patch reshapes), a CLIP with >= 11 hidden states (mid layer -11),
the 256-wide decoder (7.6 M parameters). Widths: CLIP 32 (12 layers, built at 336 px so the position table is
resized), LLaMA 32 (2 layers, 4 heads), vocabulary 1509 (the llava-sp test tokenizer + [SEG0..5]).

Generation with random weights would never emit SEG tokens, so the embeddings and LM head get a bigram chain:
each chain token's embedding is a large orthogonal direction u_a and the LM-head row of its successor is c u_a,
so greedy decoding follows ":" -> "Sure" "," [SEG0] ... [SEG5] "and" [SEG0] ... (every step still runs the whole
model; the chain only makes argmax predictable).

What is patched at run time (nothing numerical): `.cuda()` on tensors and modules returns self (CPU);
torch.cuda.empty_cache is a no-op on the CPU build already; if torchvision does not import, a stand-in module
supplies the two functions the release uses (to_pil_image, and resize on a PIL image = PIL bilinear, as
torchvision does for PIL input). Deviations from the released scripts' calls, none numerical: our two
PixelLMForCausalLM.from_pretrained calls pass low_cpu_mem_usage=False (train_ds.py / chat.py pass True: it changes
how tensors are allocated, not their values); the model reloaded as chat.py does lacks the ce/bce/dice weight
attributes that only the training constructor sets, so they are set to train_ds.py's defaults (1.0, 2.0, 0.5);
the training path runs in train() mode (llava_llama.forward returns every layer's hidden states, which
model_forward indexes with [-1], only when training; no dropout is active in the model).

Usage: tools/make_fixtures.sh --release RELEASE (makes the throwaway venv: torch==2.13.0 CPU, transformers==4.31.0,
accelerate==0.21.0 (the release's CLIP loader passes low_cpu_mem_usage=True), pillow==9.4.0 (the release's pin),
sentencepiece, protobuf, numpy, scipy, safetensors, opencv-python-headless, pycocotools, einops, matplotlib,
scikit-image (imported by the release's modules)), or with such a venv:
  python tools/reference/release_parity.py --release RELEASE [--out Tests/PixelReleaseTests/Fixtures/release]
RELEASE: a checkout of MaverickRen/PixelLM at ebf0792 (the .py and .json files are enough). Same inputs, same
bytes: two runs write identical files.
"""
import argparse
import json
import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")   # nothing comes from a hub
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
TOKDIR = os.path.join(ROOT, "Tests", "PixelTextTests", "Fixtures", "llava-sp")

ap = argparse.ArgumentParser()
ap.add_argument("--release", required=True, help="a checkout of MaverickRen/PixelLM at ebf0792")
ap.add_argument("--out", default=os.path.join(ROOT, "Tests", "PixelReleaseTests", "Fixtures", "release"))
args = ap.parse_args()

# ------------------------------------------------------------------------------------------------------
# run-time patches (CPU only; see the docstring)

torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
import transformers  # noqa: E402  (before any torchvision stand-in: transformers probes the package's spec)
try:
    import torchvision  # noqa: F401
    import torchvision.transforms.functional  # noqa: F401
except Exception:
    from PIL import Image

    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    tvf = types.ModuleType("torchvision.transforms.functional")
    tvo = types.ModuleType("torchvision.ops")
    tvb = types.ModuleType("torchvision.ops.boxes")

    def to_pil_image(pic):
        assert isinstance(pic, np.ndarray) and pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == 3
        return Image.fromarray(pic, mode="RGB")

    def resize(img, size):
        # torchvision.transforms.functional.resize on a PIL image with a (h, w) size: PIL bilinear
        h, w = size
        return img.resize((w, h), Image.BILINEAR)

    def _unused(*a, **k):
        raise RuntimeError("torchvision stand-in: not used by the paths this script runs")

    tvf.to_pil_image, tvf.resize = to_pil_image, resize
    tvb.batched_nms = tvb.box_area = _unused
    tv.transforms, tvt.functional, tv.ops, tvo.boxes = tvt, tvf, tvo, tvb
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tvt, "torchvision.transforms.functional": tvf,
                        "torchvision.ops": tvo, "torchvision.ops.boxes": tvb})

sys.path.insert(0, os.path.abspath(args.release))
import cv2  # noqa: E402
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel  # noqa: E402

assert transformers.__version__ == "4.31.0", f"the release pins transformers 4.31.0, found {transformers.__version__}"
from model.llava import conversation as conversation_lib  # noqa: E402
from model.llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM  # noqa: E402
from model.llava.mm_utils import tokenizer_image_token  # noqa: E402
from model.PixelLM import PixelLMForCausalLM  # noqa: E402
from model.segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402
from utils.dataset import collate_fn  # noqa: E402
from utils.utils import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN  # noqa: E402
import chat as release_chat  # noqa: E402  (its preprocess: normalise in 0-255 space, pad bottom/right)

torch.manual_seed(0)
np.random.seed(0)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = os.path.abspath(args.out)
if os.path.exists(OUT):
    shutil.rmtree(OUT)
os.makedirs(OUT)
work = tempfile.mkdtemp(prefix="release-parity-")
tensors = {}
meta = {"release": "MaverickRen/PixelLM@ebf0792", "transformers": transformers.__version__, "torch": torch.__version__}


def put(name, t):
    t = t.detach().float().contiguous() if t.is_floating_point() else t.detach().to(torch.float32).contiguous()
    assert name not in tensors, name
    tensors[name] = t.clone()


# ------------------------------------------------------------------------------------------------------
# 1. the CLIP tower (HF CLIPVisionModel directory, built at 336 px: the release resizes its position table)

clip_dir = os.path.join(OUT, "clip")
vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=4,
                        image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                        projection_dim=32)
clip = CLIPVisionModel(vcfg)
with torch.no_grad():
    for n, p in clip.named_parameters():
        if n.endswith("layer_norm1.weight") or n.endswith("layer_norm2.weight") or "layrnorm.weight" in n:
            p.copy_(1 + 0.2 * torch.randn_like(p))
        elif n.endswith(".bias"):
            p.copy_(0.05 * torch.randn_like(p))
        elif "position_embedding" in n or "class_embedding" in n:
            p.copy_(0.5 * torch.randn_like(p))
        else:
            p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1))
clip.save_pretrained(clip_dir)  # transformers 4.31: pytorch_model.bin (fp32) + config.json
shutil.copy(os.path.join(args.release, "configs", "preprocessor_448.json"), os.path.join(clip_dir, "preprocessor_config.json"))

# ------------------------------------------------------------------------------------------------------
# 2. a tiny LLaVA base (LLaVA-Lightning layout: single-Linear mm_projector, tokenizer without SEG tokens)

llava_dir = os.path.join(OUT, "llava")
os.makedirs(llava_dir)
for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(TOKDIR, f), os.path.join(llava_dir, f))
added = json.load(open(os.path.join(TOKDIR, "added_tokens.json")))
base_added = {k: v for k, v in added.items() if not k.startswith("[SEG")}  # <im_patch>, <im_start>, <im_end>
json.dump(base_added, open(os.path.join(llava_dir, "added_tokens.json"), "w"), indent=2)
base_vocab = 1500 + len(base_added)
lcfg = LlavaConfig(vocab_size=base_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6,
                   initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
lcfg.mm_vision_tower = clip_dir   # local while building (the release reads the tower's config); hub name on disk
lcfg.mm_hidden_size = 32
lcfg.mm_vision_select_layer = -2
lcfg.mm_vision_select_feature = "patch"
lcfg.mm_use_im_start_end = True
lcfg.mm_use_im_patch_token = False
lcfg.separate_mm_projector = False
llava = LlavaLlamaForCausalLM(lcfg)
with torch.no_grad():
    for n, p in llava.named_parameters():
        if n.endswith("norm.weight"):
            p.copy_(1 + 0.2 * torch.randn_like(p))
        elif p.dim() > 1:
            p.copy_(torch.randn_like(p) * 0.1)
        else:
            p.copy_(torch.randn_like(p) * 0.05)
assert any(n == "model.mm_projector.weight" for n, _ in llava.named_parameters())
llava.save_pretrained(llava_dir)  # pytorch_model.bin fp32
lj = json.load(open(os.path.join(llava_dir, "config.json")))
lj["mm_vision_tower"] = "openai/clip-vit-large-patch14"
json.dump(lj, open(os.path.join(llava_dir, "config.json"), "w"), indent=2, sort_keys=True)
base_state = {k: v.clone() for k, v in llava.state_dict().items()}
del llava

# ------------------------------------------------------------------------------------------------------
# 3. PixelLM from the LLaVA base, as train_ds.py builds it (lora_r 0: LoRA would be merged at export anyway)

tokenizer = AutoTokenizer.from_pretrained(llava_dir, model_max_length=512, padding_side="right", use_fast=False)
tokenizer.pad_token = tokenizer.unk_token
new_tokens = ["[SEG{}]".format(i) for i in range(6)]
tokenizer.add_tokens(new_tokens)
seg_token_idx = [tokenizer(t, add_special_tokens=False).input_ids[0] for t in new_tokens]
tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
assert seg_token_idx == list(range(base_vocab, base_vocab + 6)), seg_token_idx
meta["seg_token_idx"] = seg_token_idx
meta["vocab"] = len(tokenizer)
model_args = {
    "train_mask_decoder": True, "out_dim": 256, "ce_loss_weight": 1.0, "dice_loss_weight": 0.5,
    "bce_loss_weight": 2.0, "seg_token_idx": seg_token_idx, "vision_pretrained": None, "vision_tower": clip_dir,
    "use_mm_start_end": True, "seg_token_num": 3, "logger": None, "tokenizer": tokenizer, "local_rank": 0,
    "pad_train_clip_images": True, "resize_vision_tower": True, "resize_vision_tower_size": 448,
    "vision_tower_for_mask": True, "separate_mm_projector": True, "masks_process_with_clip": False,
    "image_feature_scale_num": 2,
}
model = PixelLMForCausalLM.from_pretrained(llava_dir, torch_dtype=torch.float32, low_cpu_mem_usage=False, **model_args)
model.config.eos_token_id = tokenizer.eos_token_id
model.config.bos_token_id = tokenizer.bos_token_id
model.config.pad_token_id = tokenizer.pad_token_id
model.get_model().initialize_vision_modules(model.get_model().config)
model.get_model().initialize_pixellm_modules(model.get_model().config)
model.resize_token_embeddings(len(tokenizer))
conversation_lib.default_conversation = conversation_lib.conv_templates["llava_v1"]

# what the initialisation made: names, shapes, and which tensors are the base's
init_state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}
from_base, fresh = [], []
for k, v in init_state.items():
    b = base_state.get(k)
    if b is not None and b.shape == v.shape and torch.equal(b, v):
        from_base.append(k)
    elif b is not None and b.dim() == 2 and v.dim() == 2 and b.shape[1] == v.shape[1] and b.shape[0] < v.shape[0] \
            and torch.equal(v[: b.shape[0]], b):
        from_base.append(k + "[:%d]" % b.shape[0])
        fresh.append(k + "[%d:]" % b.shape[0])
    else:
        fresh.append(k)
meta["llava_init"] = {
    "names": {k: list(v.shape) for k, v in init_state.items()},
    "from_base": from_base,
    "fresh": fresh,
    "ignored_from_base": sorted(k for k in base_state if k not in init_state),
}

# ------------------------------------------------------------------------------------------------------
# 4. "train": move every weight off its initial value (LayerNorms away from 1/0), then the bigram chain

g = torch.Generator().manual_seed(7)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "vision_tower" in n:
            continue
        s = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.05
        p.add_(torch.randn(p.shape, generator=g) * 0.3 * s)
        if "norm" in n and n.endswith("weight"):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)

infer_prompt_probe = tokenizer_image_token(
    "x USER: <im_start><image><im_end>\nq ASSISTANT:", tokenizer)
colon = infer_prompt_probe[-1]
words = tokenizer(" Sure, and.", add_special_tokens=False).input_ids
sure_ids = tokenizer("Sure,", add_special_tokens=False).input_ids
and_ids = tokenizer(" and", add_special_tokens=False).input_ids
dot_ids = tokenizer(".", add_special_tokens=False).input_ids
meta["chain_pieces"] = {"colon": colon, "sure": sure_ids, "and": and_ids, "dot": dot_ids}
eos = tokenizer.eos_token_id
S = seg_token_idx
loop_chain = [colon] + sure_ids + S + and_ids + [S[0]]            # ... [SEG5] and [SEG0] ... (loops)
eos_chain = [colon] + sure_ids + S + dot_ids + [eos]                 # ... [SEG5] . </s>


def bigram(chain):
    """pairs (a -> b) of a chain; every a appears once."""
    pairs = list(zip(chain[:-1], chain[1:]))
    assert len({a for a, _ in pairs}) == len(pairs), pairs
    return pairs


def apply_chain(m, pairs, seed, scale_e=20.0, scale_h=4.0):
    """E[a] = scale_e u_i (+ a little of the old row), H[b] = scale_h sum of the u_i of b's predecessors (+ a
    little): the residual stream at a chain token is dominated by u_i, so the final-norm state points along it
    and b wins the argmax by a wide margin. The u_i are orthonormal (QR of a seeded Gaussian)."""
    E = m.get_model().embed_tokens.weight
    H = m.lm_head.weight
    D = E.shape[1]
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        for b in {b for _, b in pairs}:
            H[b] = 0.1 * H[b]
        for i, (a, b) in enumerate(pairs):
            E[a] = scale_e * q[:, i] + 0.1 * E[a]
            H[b] += scale_h * q[:, i]


apply_chain(model, bigram(loop_chain), seed=11)

# ------------------------------------------------------------------------------------------------------
# 5. export as merge_lora_weights_and_save_hf_model.py does (no vision_tower keys, bf16, tokenizer)

pixellm_dir = os.path.join(OUT, "pixellm")
state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}
model.to(torch.bfloat16).save_pretrained(pixellm_dir, state_dict={k: v.to(torch.bfloat16) for k, v in state.items()})
tokenizer.save_pretrained(pixellm_dir)
for f in os.listdir(pixellm_dir):
    if f.endswith(".safetensors"):
        raise SystemExit("expected pytorch_model.bin (transformers 4.31 default), found " + f)
del model, state

# the EOS variant: the same model with another chain in embed_tokens / lm_head (stored as two tensors)


def load_release_model():
    """chat.py: from_pretrained(hf_model, vision_tower=..., seg_token_idx=...), initialize_vision_modules, fp32."""
    tok = AutoTokenizer.from_pretrained(pixellm_dir, model_max_length=512, padding_side="right", use_fast=False)
    tok.pad_token = tok.unk_token
    tok.add_tokens(new_tokens)
    ids = [tok(t, add_special_tokens=False).input_ids[0] for t in new_tokens]
    assert ids == seg_token_idx
    kw = {"torch_dtype": torch.float32, "seg_token_num": 3, "image_feature_scale_num": 2,
          "pad_train_clip_images": True, "resize_vision_tower": True, "resize_vision_tower_size": 448,
          "vision_tower_for_mask": True, "separate_mm_projector": True}
    m = PixelLMForCausalLM.from_pretrained(pixellm_dir, low_cpu_mem_usage=False, vision_tower=clip_dir,
                                           seg_token_idx=ids, **kw)
    m.config.eos_token_id = tok.eos_token_id
    m.config.bos_token_id = tok.bos_token_id
    m.config.pad_token_id = tok.pad_token_id
    m.get_model().initialize_vision_modules(m.get_model().config)
    m = m.float()
    m.eval()
    # training-path weights for the losses (model_forward reads these attributes)
    m.ce_loss_weight, m.bce_loss_weight, m.dice_loss_weight = 1.0, 2.0, 0.5
    return m, tok


model, tokenizer = load_release_model()
# the committed config names the tower as the released hf_model config does (a hub name; pass the CLIP dir)
cfg_path = os.path.join(pixellm_dir, "config.json")
cj = json.load(open(cfg_path))
cj["mm_vision_tower"] = cj["vision_tower"] = "openai/clip-vit-large-patch14"
cj["_name_or_path"] = "tiny-llava-base"   # (the build path otherwise)
json.dump(cj, open(cfg_path, "w"), indent=2, sort_keys=True)
with torch.no_grad():
    E0 = model.get_model().embed_tokens.weight.clone()
    H0 = model.lm_head.weight.clone()
    # forget the loop chain (fresh small rows for every token it touched), then the EOS chain on a new basis
    gv = torch.Generator().manual_seed(13)
    for x in set(loop_chain):
        model.get_model().embed_tokens.weight[x] = 0.1 * torch.randn(E0.shape[1], generator=gv)
        model.lm_head.weight[x] = 0.1 * torch.randn(E0.shape[1], generator=gv)
    apply_chain(model, bigram(eos_chain), seed=12)
    put("variant_eos.model.embed_tokens.weight", model.get_model().embed_tokens.weight.to(torch.bfloat16))
    put("variant_eos.lm_head.weight", model.lm_head.weight.to(torch.bfloat16))
    model.get_model().embed_tokens.weight.copy_(E0)
    model.lm_head.weight.copy_(H0)

# ------------------------------------------------------------------------------------------------------
# 6. images, masks, conversations


def smooth_image(h, w, seed):
    r = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, ph = r.uniform(0.02, 0.15, 3)
        img[..., c] = 128 + 90 * np.sin(a * xx + ph) * np.cos(b * yy - ph)
    for _ in range(4):
        cy, cx, rad = r.randint(0, h), r.randint(0, w), r.randint(min(h, w) // 8, min(h, w) // 3)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2] = r.randint(0, 256, 3)
    img += r.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def blob_mask(h, w, seed):
    r = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = r.randint(h // 4, 3 * h // 4), r.randint(w // 4, 3 * w // 4)
    ry, rx = r.randint(h // 8, h // 3), r.randint(w // 8, w // 3)
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1).astype(np.uint8)


images = {"landscape": (150, 200), "portrait": (173, 97)}   # (H, W)
transform_clip = ResizeLongestSide(448)
img_info = {}
for i, (name, (h, w)) in enumerate(images.items()):
    rgb = smooth_image(h, w, 100 + i)
    cv2.imwrite(os.path.join(OUT, name + ".png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    # chat.py / ValDataset: cv2.imread, BGR -> RGB, ResizeLongestSide(448) (PIL bilinear), preprocess
    image_np = cv2.cvtColor(cv2.imread(os.path.join(OUT, name + ".png")), cv2.COLOR_BGR2RGB)
    assert (image_np == rgb).all()
    image_clip = transform_clip.apply_image(image_np)
    clip_resize = image_clip.shape[:2]
    pixels = release_chat.preprocess(torch.from_numpy(image_clip).permute(2, 0, 1).contiguous(), img_size=448)
    img_info[name] = {"pixels": pixels, "clip_resize": tuple(int(x) for x in clip_resize), "original": (h, w)}
    put(name + ".pixels", pixels)
meta["images"] = {k: {"clip_resize": v["clip_resize"], "original": v["original"], "file": k + ".png"}
                  for k, v in img_info.items()}
assert img_info["portrait"]["clip_resize"][1] % 14 != 0, img_info["portrait"]["clip_resize"]

SEG6 = " ".join(new_tokens)                    # "[SEG0] [SEG1] ... [SEG5]" as the datasets format it


def conv_prompt(question, answer):
    conv = conversation_lib.default_conversation.copy()
    conv.messages = []
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], answer)
    return conv.get_prompt()


# (image, question, answer, number of targets): refCOCO single, multi-referring, MUSE text answer
train_convs = [
    ("landscape", DEFAULT_IMAGE_TOKEN + "\n What is the red ball in this image? Please output segmentation mask.",
     SEG6 + ".", 1),
    ("landscape", DEFAULT_IMAGE_TOKEN + "\n What is the tree, the blue car and the left cup in this image? "
     "Please output segmentation mask.", SEG6 + ", " + SEG6 + " and " + SEG6 + ".", 3),
    ("portrait", DEFAULT_IMAGE_TOKEN + "\nWhere could a person sit down here? Please output segmentation mask.",
     "A person could sit on the bench " + SEG6 + " or on the low wall " + SEG6 + ".", 2),
]
masks = {n: [] for n in images}
for ci, (name, _, _, k) in enumerate(train_convs):
    h, w = images[name]
    for j in range(k):
        masks[name].append(blob_mask(h, w, 1000 + 10 * ci + j))
for name in images:
    put(name + ".gt_masks", torch.from_numpy(np.stack(masks[name])).float())

batch = []
for name in images:
    convs = [conv_prompt(q, a) for (n, q, a, _) in train_convs if n == name]
    h, w = images[name]
    batch.append((name + ".png", torch.zeros(3, 1024, 1024), img_info[name]["pixels"], convs,
                  torch.from_numpy(np.stack(masks[name])), torch.ones(h, w) * 255, (1, 1),
                  img_info[name]["clip_resize"], None, None, False, False))
coll = collate_fn(batch, tokenizer=tokenizer, conv_type="llava_v1", use_mm_start_end=True)
meta["train"] = {"conversations": coll["conversation_list"], "offset": coll["offset"].tolist(),
                 "input_ids": coll["input_ids"].tolist(), "labels": coll["labels"].tolist(),
                 "targets_per_conversation": [k for (_, _, _, k) in train_convs]}

# ------------------------------------------------------------------------------------------------------
# 7. hooks: what the release computes inside


class Recorder:
    def __init__(self):
        self.calls = {}
        self.handles = []

    def hook(self, module, name, fn):
        def h(mod, inp, kw, out):
            self.calls.setdefault(name, []).append(fn(inp, kw, out))
        self.handles.append(module.register_forward_hook(h, with_kwargs=True))

    def clear(self):
        self.calls = {}

    def remove(self):
        for h in self.handles:
            h.remove()


rec = Recorder()
mm = model.get_model()
vt = mm.get_vision_tower()
rec.hook(vt, "vision", lambda i, k, o: (o[0].clone(), o[1][0].clone()))          # deep [n, 1024, D], mid
rec.hook(mm.mm_projector, "image_tokens", lambda i, k, o: o.clone())             # [n, 256, H] (also other calls)
rec.hook(mm.text_hidden_fcs[0], "fcs", lambda i, k, o: (i[0].clone(), o.clone()))  # final-norm hidden, projected
rec.hook(mm.prompt_encoder, "queries", lambda i, k, o: k["text_embeds"].clone())
rec.hook(mm.image_feature_neck, "neck", lambda i, k, o: o.clone())
rec.hook(model.lm_head, "logits", lambda i, k, o: o.clone())
orig_post = model.postprocess_masks
post_calls = []


def post_wrap(masks_, input_size, original_size):
    out = orig_post(masks_, input_size, original_size)
    post_calls.append((masks_.clone(), out.clone()))
    return out


model.postprocess_masks = post_wrap

# ------------------------------------------------------------------------------------------------------
# 8. the training path: losses and everything before them

model.train()   # llava_llama.forward returns all layers' hidden states only in training mode; no dropout is active
with torch.no_grad():
    res = model(images=coll["images"], images_clip=coll["images_clip"], input_ids=coll["input_ids"],
                labels=coll["labels"], attention_masks=coll["attention_masks"], offset=coll["offset"],
                masks_list=coll["masks_list"], label_list=coll["label_list"], resize_list=coll["resize_list"],
                clip_resize_list=coll["clip_resize_list"], inference=False)
for k in ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss"):
    put("train." + k, res[k].reshape([]))
deep, mid = rec.calls["vision"][0]
first = coll["offset"].tolist()[:-1]   # CLIP ran on one copy of its image per conversation: keep the first
put("train.vision.deep", deep[first])
put("train.vision.mid", mid[first])
put("train.image_tokens", rec.calls["image_tokens"][-1][first])
hid, proj = rec.calls["fcs"][0]
put("train.lm.hidden", hid)
# logits at the rows the CE reads (row p - 1 for every supervised label at expanded position p), to keep the
# fixture small; the row list is in release.json
logits = rec.calls["logits"][0]
rows = []
for b, lab in enumerate(coll["labels"].tolist()):
    img = coll["input_ids"][b].tolist().index(-200)
    for t, y in enumerate(lab):
        if y != -100 and t > 0:
            p = t if t < img else t + 255
            rows.append((b, p - 1))
meta["train"]["logit_rows"] = rows
put("train.lm.logits_at_labels", torch.stack([logits[b, r] for b, r in rows]))
for i, q in enumerate(rec.calls["queries"]):
    put(f"train.seg.queries.{i}", q)
for i, e in enumerate(rec.calls["neck"]):
    put(f"train.image.embeddings.{i}", e)
for i, (low, full) in enumerate(post_calls):
    put(f"train.mask.logits_low.{i}", low[:, 0])
    put(f"train.mask.logits.{i}", full[:, 0])
rec.clear()
post_calls.clear()
model.eval()

# the released loss functions on the same logits and targets, evaluated on their own (a second check that the
# numbers above are the released arithmetic: sigmoid_ce_loss and dice_loss from model/PixelLM.py)
from model.PixelLM import dice_loss, sigmoid_ce_loss  # noqa: E402

bce = sum(sigmoid_ce_loss(tensors[f"train.mask.logits.{i}"], coll["masks_list"][i], num_masks=coll["masks_list"][i].shape[0])
          * coll["masks_list"][i].shape[0] for i in range(2))
dice = sum(dice_loss(tensors[f"train.mask.logits.{i}"], coll["masks_list"][i], num_masks=coll["masks_list"][i].shape[0])
           * coll["masks_list"][i].shape[0] for i in range(2))
nm = sum(m.shape[0] for m in coll["masks_list"])
assert abs(float(2.0 * bce / (nm + 1e-8)) - float(tensors["train.mask_bce_loss"])) < 1e-6
assert abs(float(0.5 * dice / (nm + 1e-8)) - float(tensors["train.mask_dice_loss"])) < 1e-6

# ------------------------------------------------------------------------------------------------------
# 9. refCOCO validate(): model_forward(inference=True), one image per call, teacher-forced SEG tokens

meta["validate"] = {}
for name in images:
    one = [b for b in batch if b[0] == name + ".png"]
    one = [(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], True) for b in one]
    c1 = collate_fn(one, tokenizer=tokenizer, conv_type="llava_v1", use_mm_start_end=True)
    with torch.no_grad():
        out = model(images=c1["images"], images_clip=c1["images_clip"], input_ids=c1["input_ids"],
                    labels=c1["labels"], attention_masks=c1["attention_masks"], offset=c1["offset"],
                    masks_list=c1["masks_list"], label_list=c1["label_list"], resize_list=c1["resize_list"],
                    clip_resize_list=c1["clip_resize_list"], inference=True)
    meta["validate"][name] = {"input_ids": c1["input_ids"].tolist()}
    put(f"validate.{name}.mask.logits", out["pred_masks"][0])
    put(f"validate.{name}.lm.hidden", rec.calls["fcs"][0][0])
    rec.clear()
    post_calls.clear()

# ------------------------------------------------------------------------------------------------------
# 10. MUSE evaluate(): greedy generation, SEG gathering from the generated tokens


def muse_prompt(sent):
    conv = conversation_lib.default_conversation.copy()
    conv.messages = []
    q = (DEFAULT_IMAGE_TOKEN + "\n" + "{sent} Please output segmentation mask.").format(sent=sent)
    q = q.replace(DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
    conv.append_message(conv.roles[0], q)
    conv.append_message(conv.roles[1], "")
    return conv.get_prompt()


def run_evaluate(tag, name, sents, max_new_tokens):
    prompts = [muse_prompt(s) for s in sents]
    ids = [tokenizer_image_token(p, tokenizer, return_tensors="pt") for p in prompts]
    ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id)
    info = img_info[name]
    with torch.no_grad():
        output_ids, pred_masks, counts, scores = model.evaluate(
            info["pixels"][None], torch.zeros(1, 3, 1024, 1024), ids, [(1, 1)],
            clip_resize_list=[info["clip_resize"]], original_size_list=[info["original"]],
            max_new_tokens=max_new_tokens, tokenizer=tokenizer)
    m = {"image": name, "prompts": prompts, "prompt_ids": ids.tolist(), "max_new_tokens": max_new_tokens,
         "output_ids": [o[0].tolist() for o in output_ids], "targets_per_question": counts[0].tolist()}
    put(f"{tag}.mask.logits", pred_masks[0])
    if rec.calls.get("queries"):
        put(f"{tag}.seg.queries", rec.calls["queries"][-1])
    # the final-norm hidden states of the last generation step of each question (the rows SEG gathering reads)
    for qi, (hs, _) in enumerate([c for c in rec.calls["fcs"]]):
        put(f"{tag}.lm.hidden.{qi}", hs[0])
    rec.clear()
    post_calls.clear()
    return m


meta["evaluate"] = {}
sents = ["Find the places where one could sit.", "Which things are red?", "Show the two largest objects."]
# every step runs the whole sequence (use_cache False): the fcs hook fires once per question, on the last step's
# hidden states; keep only those calls
orig_fcs_calls = None


def last_step_only(tag, name, ss, n):
    # the fcs hook fires only inside evaluate() (generate's forward does not call text_hidden_fcs)
    return run_evaluate(tag, name, ss, n)


n_two = len(sure_ids) + 6 + len(and_ids) + 6          # "Sure," [SEG0..5] "and" [SEG0..5]
meta["evaluate"]["muse_two_targets"] = last_step_only("evaluate.two", "landscape", sents, n_two)
meta["evaluate"]["muse_cut_in_group"] = last_step_only("evaluate.cut", "landscape", sents[:1], n_two - 3)
with torch.no_grad():
    model.get_model().embed_tokens.weight.copy_(tensors["variant_eos.model.embed_tokens.weight"])
    model.lm_head.weight.copy_(tensors["variant_eos.lm_head.weight"])
meta["evaluate"]["muse_eos"] = last_step_only("evaluate.eos", "portrait", sents[1:], 40)

# the chains did what they were built for
two = meta["evaluate"]["muse_two_targets"]
for out_ids, p in zip(two["output_ids"], two["prompt_ids"]):
    gen = out_ids[len([t for t in p if t != 0]):]
    assert gen == sure_ids + S + and_ids + S, gen
assert two["targets_per_question"] == [2, 2, 2], two["targets_per_question"]
cut = meta["evaluate"]["muse_cut_in_group"]
assert cut["targets_per_question"] == [0], cut
eosr = meta["evaluate"]["muse_eos"]
for out_ids, p in zip(eosr["output_ids"], eosr["prompt_ids"]):
    gen = out_ids[len([t for t in p if t != 0]):]
    assert gen == sure_ids + S + dot_ids + [eos], gen
assert eosr["targets_per_question"] == [1, 1], eosr

# ------------------------------------------------------------------------------------------------------
# 11. write

from safetensors.torch import save_file  # noqa: E402

save_file(tensors, os.path.join(OUT, "release.safetensors"), metadata={"source": meta["release"]})
json.dump(meta, open(os.path.join(OUT, "release.json"), "w"), indent=1)
shutil.rmtree(work)
print("wrote", OUT)
for k in sorted(tensors):
    print(f"  {k}: {list(tensors[k].shape)}")
