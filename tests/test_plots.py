"""harness.report.plots: a training-curves figure is written for real epochs rows, and nothing for none."""

import pandas as pd

from harness.report import plots


def test_training_curves_draw_one_line_per_run(tmp_path):
    epochs = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "epoch": [1, 2, 1, 2], "train_ce_img": [2.0, 1.5, 2.1, 1.4],
                           "train_ce_txt": [2.0, 1.6, 2.2, 1.3], "val_id_accuracy": [0.5, 0.6, 0.4, 0.7]})
    path = tmp_path / "curves.png"
    assert plots.training_curves(epochs, {"a": "run a", "b": "run b"}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plots.training_curves(pd.DataFrame(), {}, tmp_path / "none.png")
