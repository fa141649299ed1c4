"""The engine every driver shares: what a run prepares (setup.py), one disk-backed
experience of one agent (step.py), the in-process driver (simulation.py) and the
teacher cache of presets (teacher_cache.py)."""
