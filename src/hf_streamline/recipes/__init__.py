"""YAML recipes: one validated file describes a whole job (``hf-streamline run RECIPE.yaml``)."""

from .mergekit import mergekit_passthrough_yaml
from .runner import RECIPE_FILENAME, run_recipe
from .schema import Recipe, load_recipe, validate_recipe

__all__ = ["RECIPE_FILENAME", "Recipe", "load_recipe", "mergekit_passthrough_yaml", "run_recipe", "validate_recipe"]
