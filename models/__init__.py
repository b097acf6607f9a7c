"""The model library: importable without the trainer or inference (timm's shape).

    from models import create_model, load_for_inference
    model = create_model(spec)                       # spec: models.config.ModelSpec (a run Config is one)
    model, spec = load_for_inference("run/best")     # a best checkpoint (models.checkpoint)

``registry`` (create_model, register_model), ``config`` (ModelSpec and its sections), ``batch`` (the batch every
model takes: prepare, collate), ``av_model`` (the audio-visual transformer, ``av_transformer``), ``baseline``
(the organizers' seed baseline, ``seed_baseline``), ``layers``, ``counting`` (the 200M rule, thop),
``checkpoint`` (the best-checkpoint format), ``scoring`` (how outputs become a clip's score:
``score.rule``). Importing the package registers every model.
"""

from models import av_model, baseline  # noqa: F401  (registration)
from models.checkpoint import load_for_inference, save_best
from models.config import ConfigError, InputConfig, ModelSpec
from models.registry import create_model, list_models, register_model

__all__ = ["ConfigError", "InputConfig", "ModelSpec", "create_model", "list_models", "load_for_inference",
           "register_model", "save_best"]
