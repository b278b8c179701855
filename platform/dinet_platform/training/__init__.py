"""Training: the stage objective (plain PyTorch) and its Ray Train / MLflow orchestration."""
