"""Orchestration around the Ray-free core: the Ray Train / Tune layer (ray_layer, ray_noise), what a
cluster can admit (admission), checks before any compute (preflight), the sweep and demo drivers
(driver, demo) and `harness evaluate` of existing weights (evaluate_weights)."""
