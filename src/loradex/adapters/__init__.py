"""LoRA adapters: data.py (training JSONL), context.py (retrieval-aware examples), replay.py (against
forgetting), train.py (the training loop), registry.py (versions, validation, activation, rollback)."""
