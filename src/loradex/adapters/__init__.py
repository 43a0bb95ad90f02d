"""LoRA adapters: training data (data.py), training (train.py), the versioned registry (registry.py)."""
