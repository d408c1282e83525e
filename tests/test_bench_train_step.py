"""benchmarks train-step: Ctrl-C keeps the finished cases; JSON and the plot are written beside the CSV."""

import json

import pytest

from benchmarks import train_step


def test_ctrl_c_keeps_finished_cases_and_they_are_written(monkeypatch, tmp_path):
    calls = []

    def fake_run_one(preset, device, dtype, data, **kw):
        calls.append(kw["compile"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"config": preset, "arch": kw["arch"], "device": device, "dtype": dtype, "compile": kw["compile"],
                "tokens_per_s": 1000.0, "ms_per_step": 5.0, "mfu": None, "compile_s": 0.0}

    monkeypatch.setattr(train_step, "run_one", fake_run_one)
    df = train_step.run(["tiny"], ["cpu"], {"cpu": ["float32"]}, None, compile_modes=["none", "default"],
                        progress=False)
    assert calls == ["none", "default"] and list(df["compile"]) == ["none"]
    paths = train_step.write(df, {"device": "cpu"}, tmp_path)
    assert [p.name for p in paths] == ["train_step.csv", "train_step.json", "train_step.png"]
    doc = json.loads((tmp_path / "train_step.json").read_text())
    assert doc["environment"] == {"device": "cpu"} and doc["results"][0]["tokens_per_s"] == 1000.0
    with pytest.raises(KeyboardInterrupt):  # nothing finished: nothing to keep, the interrupt goes on
        calls.clear()
        calls.append("x")
        train_step.run(["tiny"], ["cpu"], {"cpu": ["float32"]}, None, compile_modes=["none"], progress=False)
