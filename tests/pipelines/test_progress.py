"""pipelines/progress.py: tqdm's meter conventions, a bar on a terminal, one line per unit elsewhere, the log file."""
from __future__ import annotations

import io
import logging

from longvid.pipelines import progress
from longvid.pipelines.progress import Progress, meter


def test_meter_has_done_total_elapsed_eta_and_rate():
    assert meter(98, 155, 10.5, "inputs") == "98/155 inputs [00:10<00:06, 9.33 inputs/s]"
    assert meter(0, 155, 0.0, "inputs") == "0/155 inputs [00:00<?, ? inputs/s]"
    assert meter(155, 155, 3725.0, "steps") == "155/155 steps [1:02:05<00:00, 24.03 s/step]"  # inverted, as tqdm
    assert meter(7, None, 2.0, "rows") == "7 rows [00:02, 3.50 rows/s]"  # no total: no ETA


def test_work_skipped_at_the_start_moves_done_but_not_the_rate():
    # 50 units were committed by an earlier run; this run did 48 in 10 s: 4.8/s, 57 left -> 12 s
    assert meter(98, 155, 10.0, "inputs", initial=50) == "98/155 inputs [00:10<00:11, 4.80 inputs/s]"


def test_lines_without_a_terminal_and_the_log_file(tmp_path):
    lines: list[str] = []
    out = tmp_path / "job"
    with Progress("ingest", "inputs", total=10, out=str(out), console=lines.append) as p:
        p.skip(4)
        p.write("[ingest] starting")
        for u in range(3):
            p.update(2)
            p.emit(f"[ingest] unit {u}: 2 samples | {p.meter()}", postfix="not on a line")
        p.emit("[ingest] a unit the console does not show", echo=False)
    assert lines[0] == "[ingest] starting"
    assert [ln.split(" |")[0] for ln in lines[1:]] == [f"[ingest] unit {u}: 2 samples" for u in range(3)]
    assert lines[1].split("| ")[1].startswith("6/10 inputs [") and lines[3].split("| ")[1].startswith("10/10 inputs [")
    log = (out / "logs" / "ingest.log").read_text().splitlines()
    assert log[0].startswith("# ") and "ingest started" in log[0] and log[-1].startswith("# ingest ended")
    assert log[1:-1] == lines + ["[ingest] a unit the console does not show"]
    # a second run appends to the same file, with its own header
    with Progress("ingest", "inputs", total=1, out=str(out), quiet=True) as p:
        p.update(1)
        p.emit("[ingest] unit 5: again")
    log2 = (out / "logs" / "ingest.log").read_text().splitlines()
    assert log2[: len(log)] == log and log2[len(log) + 1] == "[ingest] unit 5: again"


def test_a_bar_on_a_terminal(tmp_path):
    stream = io.StringIO()
    lines: list[str] = []
    p = Progress("encode", "samples", total=8, out=str(tmp_path), console=lines.append, tty=True, stream=stream)
    p.update(4)
    p.emit("[encode] unit 0: 4 samples", postfix="4 samples, 0 failures")
    p.write("[encode] a job line")
    p.close()
    drawn = stream.getvalue()
    assert "[encode]" in drawn and "4/8" in drawn and "8/8" not in drawn and "4 samples, 0 failures" in drawn
    assert lines == ["[encode] a job line"]  # unit lines update the bar; other lines are printed (above it)
    assert "[encode] unit 0: 4 samples" in (tmp_path / "logs" / "encode.log").read_text()


def test_a_bar_only_where_the_console_shows_info_lines():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    log = logging.getLogger("longvid.test-progress")
    try:
        log.setLevel(logging.WARNING)  # e.g. --log-level warning
        assert Progress("ingest", "inputs", console=log.info, stream=Tty())._bar is None
        log.setLevel(logging.INFO)
        p = Progress("ingest", "inputs", console=log.info, stream=Tty())
        assert p._bar is not None
        p.close()
    finally:
        log.setLevel(logging.NOTSET)
    assert Progress("ingest", "inputs", console=print, stream=io.StringIO())._bar is None  # not a terminal


def test_quiet_writes_the_log_file_only_but_errors(tmp_path, capsys):
    p = Progress("audit", "rows", total=None, out=str(tmp_path), quiet=True)
    p.update(3)
    p.emit("[audit] batch 0")
    p.write("[audit] done")
    assert capsys.readouterr() == ("", "")
    p.write("[audit] a file could not be read", important=True)
    p.close()
    assert capsys.readouterr().out == "[audit] a file could not be read\n"
    log = (tmp_path / "logs" / "audit.log").read_text()
    assert "[audit] batch 0" in log and "[audit] done" in log and "could not be read" in log


def test_log_location():
    assert progress.log_uri("/data/out", "train") == "/data/out/logs/train.log"
    assert progress.log_uri("s3://b/p", "ingest") == "s3://b/p/logs/ingest.log"
