"""The run's spec: the experiment configuration with its per-agent overrides, the presets,
`dkt compare`'s grid, and what each kind of exchange moves. Imports no other layer of
common/."""
