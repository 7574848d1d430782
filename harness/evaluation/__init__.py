"""Evaluation: a model's embeddings of every set (evaluate), the shared embedding cache
(embed_cache), the extra inputs scores declare (score_inputs) and the heap setting a
streaming evaluation needs (allocator)."""
