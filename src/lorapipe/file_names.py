"""File names several stages agree on (stdlib only, any stage may use it)."""

# The Kohya training TOML at the top of a dataset folder: `dataset sample`/`prepare` write it, `train`, `dataset check`,
# the pipeline and the SageMaker channel read it.
DATASET_CONFIG_NAME = "kohya-sdxl-config.toml"
# Beside the trained LoRA: written by train/report.py, read by pipeline/artifact.py and published with the LoRA.
TRAIN_SUMMARY_NAME = "train_summary.json"
