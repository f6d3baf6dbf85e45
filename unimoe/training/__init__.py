"""Training core: config, deterministic data order, the trainer (checkpoint/resume, data parallel)
and Parquet metrics. Sibling modules: stages, variants, curriculum, parallel (FSDP / expert
parallelism), launch (a stage in process or under torchrun), curves (loss-curve rendering) and
replicate (the ablation-claims experiment)."""

from unimoe.training.config import STAGE_LR, TrainConfig
from unimoe.training.data import DataOrder, DatasetView, SyntheticItem, dataset_view, subset_indices, synthetic_dataset
from unimoe.training.metrics import MetricsWriter, read_metrics
from unimoe.training.trainer import Trainer, latest_checkpoint, train_stage

__all__ = [
    "STAGE_LR", "TrainConfig", "DataOrder", "DatasetView", "SyntheticItem", "dataset_view", "subset_indices",
    "synthetic_dataset", "MetricsWriter", "read_metrics", "Trainer", "latest_checkpoint", "train_stage",
]
