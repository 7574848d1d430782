"""Datasets: WebDataset shards with manifests, and the embedded synthetic benchmark world."""
