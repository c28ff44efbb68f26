"""PyTorch side of `pixellm bench model`: the whole PixelLM training step (tools/reference/pixellm_full.py, the
released training forward) timed on the batch pixellm built, with the same thread count.

Usage (normally started by `pixellm bench model`, which writes the spec):
    python tools/reference/bench_model.py SPEC.json

SPEC.json holds
    config_path, layers (null: keep num_hidden_layers), threads, seed, warmup, steps, forward_only,
    seg_token_ids [N*L], image_index [Bc] (image-major), input_ids [Bc][T] (with one -200), labels [Bc][T],
    original_sizes [B][2], valid_sizes [B][2], targets [Bc] (masks per conversation),
    lr, betas [2], eps, weight_decay (AdamW, as pixellm's)
The ids, labels and sizes are pixellm's; pixels (zero outside the valid region) and target masks are drawn
here with the same shapes. The model gets HF's / PyTorch's default random init; the released recipe decides
what is trained (PixelLMReference.released_trainable: lm_head, embed_tokens, both projectors, mask decoder,
text_hidden_fcs; CLIP, LLaMA layers, neck and prompt encoder frozen).

Phases, each `warmup` untimed steps then `steps` timed ones (time.perf_counter around the whole step):
    forward    under torch.no_grad()
    train      grads set to None, forward, total.backward() (also timed apart: forward_ms, backward_ms)
    adamw      the same plus torch.optim.AdamW.step()
(train and adamw are skipped with forward_only.)

Prints one JSON line: torch version, threads, parameter counts, build seconds, per-phase step times in ms and
the max RSS (getrusage) after each phase. Note that the released forward runs CLIP and out_mm_projector once
per *conversation* (every image is copied per question) and text_hidden_fcs on every position; pixellm runs
them once per image / on the SEG rows only, so with more than one question per image the reference does more
work for the same batch.
"""
import json
import os
import resource
import sys
import time


def max_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    spec = json.load(open(sys.argv[1]))
    threads = int(spec["threads"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))

    import torch
    import transformers

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pixellm_full as PF

    torch.set_num_threads(threads)
    torch.manual_seed(int(spec["seed"]))
    cfg = json.load(open(spec["config_path"]))
    if spec.get("layers") is not None:
        cfg["num_hidden_layers"] = int(spec["layers"])

    t0 = time.perf_counter()
    model = PF.PixelLMReference(cfg, spec["seg_token_ids"])
    build_s = time.perf_counter() - t0

    # the batch
    S = cfg["resize_vision_tower_size"]
    C = cfg.get("vision_config", {}).get("num_channels", 3)
    valid = [tuple(v) for v in spec["valid_sizes"]]
    original = [tuple(o) for o in spec["original_sizes"]]
    B = len(valid)
    pixels = torch.randn(B, C, S, S)
    for i, (h, w) in enumerate(valid):
        pixels[i, :, h:, :] = 0
        pixels[i, :, :, w:] = 0
    input_ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    labels = torch.tensor(spec["labels"], dtype=torch.long)
    attention_masks = input_ids.ne(0)
    image_index = spec["image_index"]
    assert image_index == sorted(image_index), "conversations must be image-major"
    counts = [image_index.count(i) for i in range(B)]
    assert all(c > 0 for c in counts), "every image needs a conversation (the reference's offset)"
    offset = torch.tensor([0] + [sum(counts[:i + 1]) for i in range(B)], dtype=torch.long)
    masks_list = []
    for i in range(B):
        k = sum(t for t, img in zip(spec["targets"], image_index) if img == i)
        H, W = original[i]
        masks_list.append((torch.rand(k, H, W) > 0.5).float())

    # the released recipe
    params = model.released_parameters()
    trainable = {n: p for n, p in params.items() if PF.PixelLMReference.released_trainable(n)}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainable.values())

    def run():
        return model(pixels, input_ids, labels, attention_masks, offset, masks_list, valid)

    def timed(step):
        for _ in range(int(spec["warmup"])):
            step()
        out = []
        for _ in range(int(spec["steps"])):
            t = time.perf_counter()
            step()
            out.append((time.perf_counter() - t) * 1e3)
        return out

    result = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
              "parameters": total, "trainable": n_train, "build_s": build_s, "rss_after_build": max_rss_bytes(),
              "phases": {}}
    loss = {}

    def forward():
        with torch.no_grad():
            loss["forward"] = float(run()["total"])

    result["phases"]["forward"] = {"ms": timed(forward), "max_rss": max_rss_bytes(), "loss": loss["forward"]}

    if not spec.get("forward_only"):
        split = {"forward_ms": [], "backward_ms": []}

        def train():
            for p in trainable.values():
                p.grad = None
            t0 = time.perf_counter()
            o = run()
            t1 = time.perf_counter()
            o["total"].backward()
            split["forward_ms"].append((t1 - t0) * 1e3)
            split["backward_ms"].append((time.perf_counter() - t1) * 1e3)
            loss["train"] = float(o["total"].detach())

        ms = timed(train)
        steps = int(spec["steps"])
        result["phases"]["train"] = {"ms": ms, "max_rss": max_rss_bytes(), "loss": loss["train"],
                                     "forward_ms": split["forward_ms"][-steps:], "backward_ms": split["backward_ms"][-steps:]}

        opt = torch.optim.AdamW(list(trainable.values()), lr=float(spec["lr"]), betas=tuple(spec["betas"]),
                                eps=float(spec["eps"]), weight_decay=float(spec["weight_decay"]))

        def adamw():
            opt.zero_grad(set_to_none=True)
            o = run()
            o["total"].backward()
            opt.step()
            loss["adamw"] = float(o["total"].detach())

        result["phases"]["adamw"] = {"ms": timed(adamw), "max_rss": max_rss_bytes(), "loss": loss["adamw"]}

    print(json.dumps(result))


if __name__ == "__main__":
    main()
