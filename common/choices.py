"""Every choice list of the experiment, in one torch-free home.

The modules that build each thing (data, loss, model, peers, probe, streams, teacher)
import their list from here and reject anything else; `config.py` offers exactly these
as its fields' choices. Keeping them free of torch lets the command line (`dkt --help`,
`dkt status`) start without importing torch.
"""

from __future__ import annotations

DATASETS = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100")
KD_LOSSES = ("mse", "kl", "mse-soft")
BACKBONES = ("mlp", "cnn", "slim_resnet18", "resnet32", "resnet18")
PEER_POLICIES = ("all", "ring", "random-k")
SCHEDULES = ("sync", "sequential", "async")
PROBE_SOURCES = ("holdout", *DATASETS)
ASSIGNMENTS = ("shuffled", "disjoint", "same")
AGGREGATIONS = ("mean", "coverage", "median", "trimmed-mean")
TEACHER_SOURCES = ("agents", "relay")
STRATEGIES = ("naive", "replay", "lwf", "joint", "ewc")
REPLAY_MIXING = ("concat", "batch")
EXCHANGES = ("dkt", "none", "fedavg", "fedmd")
EXCHANGE_DTYPES = ("float32", "float16")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("none", "cosine", "step")

# Which plots a results folder gets: every agent's accuracy-matrix heatmap and the two
# fleet plots (all), the fleet plots only (summary), none; auto is all up to
# ALL_PLOTS_UP_TO agents and summary beyond, where one heatmap per agent would cost more
# than the training (32 agents on digits: 3.7 s of heatmaps, 2.4 s of training). The
# data files (metrics.json, matrices/, summary.md) are the same whichever is chosen.
PLOT_SETS = ("auto", "all", "summary", "none")
ALL_PLOTS_UP_TO = 8
