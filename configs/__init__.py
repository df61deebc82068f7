"""Recipes: `get_config(arg)` files, one per kind of run; `arg` picks a preset."""
