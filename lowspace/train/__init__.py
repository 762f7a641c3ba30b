"""Training: recipes (``recipe``), the full loop (``fit``), fast proxy training for the search (``proxy``),
and their parts (optimizer / schedule, EMA, losses, the graph-capturable step, checkpoints, evaluation,
distributed helpers, metrics)."""
from .fit import FitResult, TrainingError, fit
from .proxy import ProxyResult, ProxySchedule, train_proxy
from .recipe import RECIPE_NAMES, Recipe, get_recipe, load_recipe

__all__ = ["fit", "FitResult", "TrainingError", "train_proxy", "ProxySchedule", "ProxyResult", "Recipe",
           "get_recipe", "load_recipe", "RECIPE_NAMES"]
