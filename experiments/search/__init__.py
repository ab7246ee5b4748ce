"""`transfer tune`: Optuna searches over config keys, every trial a `transfer fit` run."""
