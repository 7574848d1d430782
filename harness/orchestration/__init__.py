"""Orchestration around the Ray-free core: the Ray cluster, its shape and autoscaler (cluster,
ray_noise), the Ray Train worker (ray_layer), the Ray Tune sweep (tune_sweep), what a cluster can
admit (admission), checks before any compute (preflight), the sweep and demo drivers (driver, demo)
and `harness evaluate` of existing weights (evaluate_weights)."""
