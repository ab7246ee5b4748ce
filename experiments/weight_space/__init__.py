"""`transfer wise-ft` and `transfer soup`: checkpoints combined in weight space, evaluated, written back."""
