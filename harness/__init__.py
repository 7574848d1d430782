"""harness: fine-tune CLIP (FLYP, CMA and the methods they are compared with) and benchmark OoD detection.

A regular package (not a namespace one), so that a checkout named ``harness`` on
``sys.path`` (the cluster head's ``~/harness``) cannot merge into ``harness.__path__``.
"""
