"""The `ddcl` command line refuses bad input with a plain message and exit status 2,
before anything starts."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from ddcl.cli import main


@pytest.mark.parametrize("argv, message", [
    (["up", "--batch", "0"], "argument --batch: 0 is below 1"),
    (["up", "--steps", "-5"], "argument --steps: -5 is below 1"),
    (["up", "--agents", "x"], "argument --agents: 'x' is not an integer"),
    (["up", "--seed", str(2**32)], "argument --seed: 4294967296 is outside 0..4294967295"),
    (["up", "--deadline", "0"], "argument --deadline: 0 must be a positive number"),
    (["world", "--tick", "nan"], "argument --tick: nan must be a positive number"),
    (["up", "--port", "70000"], "argument --port: 70000 is outside 0..65535"),
    (["sync", "serve", "--epoch-seed", str(1 << 24)], "argument --epoch-seed: 16777216 is outside 0..16777215"),
    (["bench", "net", "--repeat", "0"], "argument --repeat: 0 is below 1"),
    (["sweep", "skew", "--values", "1,x"], "argument --values: '1,x' is not a comma-separated list of integers"),
    (["sweep", "skew", "--codec", "zip"], "argument --codec: invalid choice: 'zip'"),
    (["up", "--device", "tpu"], "argument --device: 'tpu' is not a device: use auto, cpu, cuda or cuda:N"),
    (["bench", "net", "--agents", "2,x"], "argument --agents: '2,x' is not a comma-separated list of integers"),
    (["bench", "net", "--agents", "2,1"], "argument --agents: 1 is below 2"),
    (["bench", "envs", "--batches", "0"], "argument --batches: 0 is below 1"),
    (["bench", "timeline", "--agents", "1"], "argument --agents: 1 is outside 2..255"),
    (["broker", "fault", "skew", "agent-0", "1e30"], "argument value: '1e30' is not an integer"),
    (["broker", "fault", "drift", "agent-0", "fast"], "argument value: 'fast' is not a number"),
    (["broker", "fault", "skew"], "the following arguments are required: agent, value"),
])
def test_bad_values_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err  # one line, the reason


@pytest.mark.parametrize("text, value", [("-1e7", -1e7), ("-5", -5.0), ("-.5", -0.5), ("-2.5E-3", -2.5e-3)])
def test_negative_numbers_in_any_float_form_are_values_not_options(text, value):
    from ddcl.cli import build_parser

    assert build_parser().parse_args(["broker", "fault", "drift", "agent-0", text]).value == value


def test_up_refuses_a_bad_faults_file_before_starting(tmp_path, capsys):
    bad = tmp_path / "faults.toml"
    bad.write_text('[[fault]]\nstep = "x"\n')
    for path, message in ((bad, "fault #1 needs a step >= 0"), (tmp_path / "missing.toml", "cannot read faults file")):
        assert main(["up", "--faults", str(path), "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["up", "--sync", "checked:0"], ["sweep", "skew", "--sync", "implicit,stamp"],
                                  ["sweep", "desync", "--sync", "healing:0"]])
def test_a_bad_sync_mode_is_refused_before_anything_starts(argv, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "run")]) == 2
    assert "sync mode must be implicit, stamped, checked:K" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["up"], ["train"], ["agent", "--broker", "tcp://127.0.0.1:1"], ["bench", "train"],
                                  ["bench", "net"], ["bench", "timeline"]])
def test_a_cuda_device_that_is_not_here_is_refused_before_anything_starts(argv, tmp_path, capsys):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last: absent on any machine
    out = ["--out", str(tmp_path / "run")] if argv[0] in ("up", "train") else []
    assert main(argv + ["--device", missing] + out) == 2
    assert f"device '{missing}' is not here: {torch.cuda.device_count()} CUDA devices" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["up", "--out"], ["world", "--out"], ["train", "--out"], ["sweep", "skew", "--out"],
                                  ["sweep", "wall-clock", "--out"], ["broker", "serve", "--log-dir"]])
def test_an_output_folder_that_cannot_be_made_is_refused(argv, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "run"
    assert main(argv + [str(bad)]) == 2
    assert f"{argv[-1]} {bad}: cannot create it (Not a directory)" in capsys.readouterr().err
    assert main(argv + [str(tmp_path / "file")]) == 2
    assert f"{argv[-1]} {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["agent"], ["world"], ["sync", "serve"], ["broker", "stats"], ["bus", "sub"]])
def test_a_malformed_broker_endpoint_is_named(argv, capsys):
    assert main(argv + ["--broker", "tcp//nowhere"]) == 2
    assert "cannot connect to 'tcp//nowhere': Invalid argument" in capsys.readouterr().err


def test_up_and_the_broker_refuse_a_port_in_use(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["up", "--port", str(port), "--out", str(tmp_path / "run")]) == 2
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
        assert main(["broker", "serve", "--bind", f"tcp://127.0.0.1:{port}"]) == 2
        assert f"cannot bind tcp://127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_key_folders_are_named_not_a_traceback(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["keys", "gen", str(tmp_path / "file" / "keys")]) == 2
    assert f"cannot write keys to {tmp_path / 'file' / 'keys'}" in capsys.readouterr().err
    for argv in (["broker", "stats"], ["up", "--out", str(tmp_path / "run")]):
        assert main(argv + ["--keys", str(tmp_path)]) == 2
        assert f"no server key in {tmp_path} (run `ddcl keys gen {tmp_path}`)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_second_signal_stops_at_once():
    from ddcl.options import stop_flag

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stopped = stop_flag()
        assert not stopped()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopped()  # the first asks the loop to end cleanly
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here, in the main thread
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
