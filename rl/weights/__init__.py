"""What is trained: the trainable weights (LoRA or full fine-tuning), the optimizer and LR schedule, export."""
