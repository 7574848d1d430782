"""Training: the Ray-free loop and one step (engine), a whole run from config to evaluated
checkpoint (runner), checkpoints, and the inputs a run needs before it starts (prepare, pretrain)."""
