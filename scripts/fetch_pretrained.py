"""ImageNet-1K weights, the one external input the competition allows, as local safetensors files.

    python -m scripts.fetch_pretrained [--out weights] [TAG ...]          # download (needs the Hugging Face hub)
    python -m scripts.fetch_pretrained --from-file ckpt.pth --tag TAG    # convert a checkpoint you already have
    python -m scripts.fetch_pretrained --list                            # the allowed tags

Without TAGs it fetches what the shipped configs name (``configs/*.yaml``: ``model.*_pretrained`` files under
weights/, named ``<tag>.safetensors``). Only the timm tags in ``IMAGENET_1K`` are accepted: each was trained on
ImageNet-1K alone (no ImageNet-21k/22k, LAION, CLIP, JFT or other pre-training, no distillation from such a
teacher); anything else is refused before a byte is downloaded. Each file is written as safetensors (nothing
pickled is kept) with its sha256 in ``<out>/manifest.json``; every load checks the file against it
(``models.registry.timm_backbone``).
Nothing here runs at training or inference time, and the Docker image bakes what ``weights/`` holds at build time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.registry import WEIGHTS_MANIFEST as MANIFEST

ROOT = Path(__file__).resolve().parents[1]
# timm tag -> what it is (every one trained on ImageNet-1K only; see each model card on the timm hub)
IMAGENET_1K = {
    "vit_small_patch16_224.augreg_in1k": "ViT-S/16, AugReg recipe, ImageNet-1K from scratch",
    "deit_small_patch16_224.fb_in1k": "DeiT-S/16 without distillation token, ImageNet-1K",
    "resnet18.a1_in1k": "ResNet-18, timm A1 recipe, ImageNet-1K",
    "resnet18.tv_in1k": "ResNet-18, torchvision weights, ImageNet-1K",
    "resnet34.a1_in1k": "ResNet-34, timm A1 recipe, ImageNet-1K",
    "resnet10t.c3_in1k": "ResNet-10-T, timm C3 recipe, ImageNet-1K",
    "convnext_tiny.fb_in1k": "ConvNeXt-T, ImageNet-1K",
    "efficientnet_b0.ra_in1k": "EfficientNet-B0, RandAugment recipe, ImageNet-1K",
    "mobilenetv3_large_100.ra_in1k": "MobileNet-V3-L 1.0, ImageNet-1K",
    "mobilenetv3_small_100.lamb_in1k": "MobileNet-V3-S 1.0, ImageNet-1K",
    "regnety_016.pycls_in1k": "RegNetY-1.6GF, pycls, ImageNet-1K",
}
MORE_THAN_IN1K = ("in21k", "in22k", "in12k", "laion", "openai", "clip", "jft", "ig1b", "ig3b", "sw", "fb_ssl",
                  "fb_swsl", "dino", "mae", "dist", "sam", "siglip", "cc12m", "yfcc", "datacomp")


class RefusedError(ValueError):
    """A tag outside the allow-list: it is (or may be) pre-trained on more than ImageNet-1K."""


def check_tag(tag: str) -> str:
    """``tag`` if allowed, else RefusedError naming why and what is allowed."""
    if tag in IMAGENET_1K:
        return tag
    suffix = tag.partition(".")[2].lower()
    why = ("its pre-training includes data beyond ImageNet-1K" if any(k in suffix for k in MORE_THAN_IN1K)
           else "it is not on the allow-list of ImageNet-1K-only checkpoints")
    raise RefusedError(f"refused {tag!r}: {why} (the competition allows ImageNet-1K weights only). Allowed: "
                       f"{', '.join(sorted(IMAGENET_1K))}")


def configured_tags() -> list[str]:
    """The tags of the weight files the shipped configs name (``weights/<tag>.safetensors``)."""
    import yaml

    tags = []
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
        for key, value in model.items() if isinstance(model, dict) else []:
            if key.endswith("_pretrained") and isinstance(value, str) and value.endswith(".safetensors"):
                tags.append(Path(value).name[: -len(".safetensors")])
    return sorted(set(tags))


def state_dict_of(tag: str, from_file: Path | None) -> dict:
    """The checkpoint's tensors: from a local file (.pth/.pt/.bin/.safetensors), else downloaded through timm."""
    import torch

    if from_file is not None:
        if from_file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(from_file))
        state = torch.load(from_file, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        return state
    import timm

    return timm.create_model(tag, pretrained=True).state_dict()  # the Hugging Face hub; fails without network


def write_weights(tag: str, state: dict, out: Path, source: str) -> Path:
    """``out/<tag>.safetensors`` (contiguous tensors, no pickle) and its entry in ``out/manifest.json``."""
    import torch
    from safetensors.torch import save_file

    from models.checkpoint import atomic_write
    from shards.assets import sha256

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source}: no tensors found in the checkpoint")
    path = out / f"{tag}.safetensors"
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"timm_tag": tag, "source": source}))
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[path.name] = {"tag": tag, "what": IMAGENET_1K[tag], "sha256": sha256(path), "bytes": path.stat().st_size,
                           "tensors": len(tensors), "source": source}
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write(manifest_path, lambda p: p.write_text(text))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.fetch_pretrained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tags", nargs="*", help="timm tags (default: the ones the shipped configs name)")
    parser.add_argument("--out", type=Path, default=ROOT / "weights")
    parser.add_argument("--from-file", type=Path, help="convert this local checkpoint instead of downloading")
    parser.add_argument("--tag", help="with --from-file: the timm tag the checkpoint is")
    parser.add_argument("--list", action="store_true", help="print the allowed tags and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{tag}: {what}" for tag, what in sorted(IMAGENET_1K.items())))
        return 0
    if args.from_file is not None and (not args.tag or args.tags):
        parser.error("--from-file needs --tag TAG (and no other tags)")
    tags = [args.tag] if args.from_file is not None else (args.tags or configured_tags())
    try:
        for tag in tags:
            check_tag(tag)
    except RefusedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for tag in tags:
        source = str(args.from_file) if args.from_file is not None else f"timm hub: {tag}"
        try:
            path = write_weights(tag, state_dict_of(tag, args.from_file), args.out, source)
        except Exception as error:  # noqa: BLE001 - a download or file problem: say which and stop
            print(f"error: {tag}: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        print(f"{tag} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
