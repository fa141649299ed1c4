"""Generated modules of the `dkt` proto packages (see proto/generate.py)."""
