"""`transfer ablate`: study files expanded into runs of `transfer fit`, executed, aggregated and plotted.

- `study`: the study file and its expansion into arms (no I/O beyond reading it).
- `plan`: each arm's CLI arguments resolved by the real parser; run folders named by config hash + seed.
- `runs`: a run's spec and the files of its folder (light: submitit jobs unpickle it).
- `execute`: one run as a `transfer fit` subprocess (retries, resume from last.ckpt, result marker).
- `executors`: local sequential or parallel; `slurm`: submitit (SLURM, or its local executor).
- `recorder`: the callback each run gets, so the runner can read its progress and validation curve.
- `progress`: the rich display; `stats`, `report`, `plots`: aggregation; `sweep`: W&B sweep export;
  `wandb_table`: the summary W&B Table.
"""
