"""torch_utils: helpers around PyTorch (misc, training_stats, persistence, distributed, ops)."""
