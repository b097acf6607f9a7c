"""Model size under the competition's rule: at most 200M parameters as measured with thop.

thop counts only the parameters of leaf modules of the types it knows that run in the forward pass, so it misses
e.g. position embeddings, class tokens and timm's own norm layers: report both thop's count and the true count
(``python -m scripts.count_params``), and refuse a model whose true count is over the limit at start-up.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

from torch import nn

from models.batch import example_batch
from models.config import ConfigError, ModelSpec

MAX_PARAMS = 200_000_000  # competition rule: one model of at most 200M parameters (as measured with thop)


def count_parameters(model: nn.Module) -> int:
    """The true parameter count (thop's is lower)."""
    return sum(p.numel() for p in model.parameters())


def check_size(model: nn.Module, source: str) -> int:
    """The true count, or ConfigError naming ``source`` when it is over MAX_PARAMS."""
    n = count_parameters(model)
    if n > MAX_PARAMS:
        raise ConfigError(f"{source}: the model has {n / 1e6:.1f}M parameters, over the competition's limit of "
                          f"{MAX_PARAMS / 1e6:.0f}M; choose smaller backbones or a narrower/shallower fusion")
    return n


def thop_counts(model: nn.Module, spec: ModelSpec) -> dict:
    """thop's parameter and MAC counts for one clip (on a CPU copy: thop leaves buffers on modules)."""
    import thop

    clone = copy.deepcopy(model).float().cpu().eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        macs, params = thop.profile(clone, inputs=(example_batch(spec.data, 1),), verbose=False)
    return {"params_thop": int(params), "macs_per_clip": int(macs)}
