"""DVC stage entry points: `python -m pipeline.<stage> --params params.yaml ...` (paths come from dvc.yaml)."""
