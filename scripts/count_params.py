"""Parameter and MAC counts of a config's model: `python -m scripts.count_params --config configs/base.yaml`.

The competition rule is "at most 200M parameters as measured with thop". thop counts only the parameters of
leaf modules of the types it knows that run in the forward pass, so it misses e.g. position embeddings, class
tokens and timm's own norm layers; this prints both thop's count and the true count (sum of all parameters) and
fails (exit 1) when either is over the limit. MACs are thop's, for one clip (attention and STFT not counted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models import create_model
from models.counting import MAX_PARAMS, count_parameters, thop_counts
from train.config import load_config


def measure(config: str | Path, overrides: list[str] | None = None) -> dict:
    cfg = load_config(config, overrides)
    model = create_model(cfg, pretrained=False)
    result = {"config": str(config), "model": cfg.model.name, "params_true": count_parameters(model),
              **thop_counts(model, cfg), "limit": MAX_PARAMS}
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    result["params_by_part"] = {k: v for k, v in parts.items() if v}
    result["within_limit"] = max(result["params_true"], result["params_thop"]) <= MAX_PARAMS
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.count_params", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args, overrides = parser.parse_known_args(argv)
    r = measure(args.config, overrides)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['config']} ({r['model']})")
        print(f"  params (thop):  {r['params_thop']:>13,}  ({r['params_thop'] / 1e6:.2f}M)")
        print(f"  params (true):  {r['params_true']:>13,}  ({r['params_true'] / 1e6:.2f}M)")
        print(f"  MACs per clip:  {r['macs_per_clip']:>13,}  ({r['macs_per_clip'] / 1e9:.2f}G, thop)")
        print(f"  limit:          {MAX_PARAMS:>13,}  -> {'OK' if r['within_limit'] else 'OVER THE LIMIT'}")
        for name, n in r["params_by_part"].items():
            print(f"    {name:<16}{n:>13,}")
    return 0 if r["within_limit"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
