"""Training: recipes (``recipe``), one engine (``engine``) behind full training (``fit``) and the search's proxy
(``train_proxy``) of a LowFormer config or a timm model (``models``), and its parts (optimizer / schedule, EMA,
losses and mixing, the graph-capturable step, checkpoints, evaluation, distributed helpers, metrics)."""
from .engine import FitResult, TrainingError
from .fit import fit
from .models import TimmModel, model_source
from .proxy import train_proxy
from .recipe import RECIPE_NAMES, Recipe, get_recipe, load_recipe, proxy_recipe

__all__ = ["fit", "FitResult", "TrainingError", "train_proxy", "Recipe", "get_recipe", "load_recipe",
           "proxy_recipe", "RECIPE_NAMES", "TimmModel", "model_source"]
