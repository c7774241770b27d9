"""The figure thread: figures are drawn beside training, and waiting for one does not wait for the others."""

import threading
from pathlib import Path

from resnet9.analysis import plots


def test_waiting_for_one_figure_leaves_later_ones_drawing(tmp_path):
    release = threading.Event()

    def quick(path: Path) -> Path:
        path.write_text("drawn")
        return path

    def slow(path: Path) -> Path:  # a job's curves.png, still being drawn when the tracker ends its run
        release.wait(timeout=10)
        path.write_text("drawn")
        return path

    plots.in_background(quick, tmp_path / "lr_finder.png")
    plots.in_background(slow, path=tmp_path / "curves.png")
    try:
        plots.wait_for_figures(tmp_path / "lr_finder.png")
        assert (tmp_path / "lr_finder.png").is_file()
        assert not (tmp_path / "curves.png").exists()  # waiting for lr_finder.png did not wait for it
    finally:
        release.set()
    plots.wait_for_figures()  # no paths: every figure asked for so far
    assert (tmp_path / "curves.png").read_text() == "drawn"


def test_a_figure_that_fails_is_a_warning_not_an_error(tmp_path, caplog):
    def broken(path: Path) -> Path:
        raise ValueError("no data to plot")

    plots.in_background(broken, tmp_path / "broken.png")
    plots.in_background(broken, tmp_path / "broken.png", "an argument too many")
    plots.wait_for_figures()
    assert "could not draw broken: ValueError: no data to plot" in caplog.text
    assert "could not draw broken: TypeError" in caplog.text
