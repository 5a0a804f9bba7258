"""fitcsc.files: the one writer of result files."""

import csv
import io
import os

import numpy as np
import pytest

from fitcsc.files import csv_text, pyplot, run_record, save_figure, write_atomic


def test_write_atomic_replaces_whole_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "out.csv"
    write_atomic(path, "a,b\n1,2\n")
    assert path.read_text() == "a,b\n1,2\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    with pytest.raises(TypeError):  # a non-text payload fails inside the write
        write_atomic(path, 12345)
    assert path.read_text() == "a,b\n1,2\n"  # the old file, whole
    assert sorted(os.listdir(path.parent)) == ["out.csv"]  # no temporary left behind
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_csv_text_round_trips_through_the_csv_module():
    rows = [["x,y", 1.5, ""], ['say "hi"', -2, "z"]]
    text = csv_text(["a", "b", "c"], rows)
    assert "\r" not in text
    back = list(csv.reader(io.StringIO(text)))
    assert back == [["a", "b", "c"], ["x,y", "1.5", ""], ['say "hi"', "-2", "z"]]


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot(np.arange(3))
    path = save_figure(fig, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert sorted(os.listdir(tmp_path)) == ["f.png"]


def test_run_record_names_device_precision_versions_and_seeds():
    rec = run_record(data=3)
    assert rec["precision"] == "float64" and rec["seeds"] == {"data": 3}
    assert rec["versions"]["jax"] and rec["versions"]["fitcsc"]
