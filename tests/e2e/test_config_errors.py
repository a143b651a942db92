"""Bad configurations and flags: hvlm-server exits with status 2 at once, and its stderr names
the offending key or flag. Every case runs its own server process; they run concurrently
(a module fixture) and each test checks one outcome."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from e2e_support import SERVER_BIN, make_config, run_server_once, server_env, write_config
from hierarchicalvlm.safetensors import save_file

# Seconds a rejected config may take (the processes run four at a time on two cores; a
# rejection by the config parser takes about half a second alone).
QUICK = 10.0



def _config(**top):
    return make_config(**top)


def _with_stack(change):
    config = make_config()
    change(config["stacks"]["small"])
    return config


def _spec_file(stack):
    del stack["spec"]
    stack["spec_file"] = "nope.json"


def _block(index, **options):
    return lambda stack: stack["spec"]["blocks"][index].update(options)


# id -> (config, extra args, --listen value (None: none), substrings stderr must hold,
#        xfail reason or None)
CASES = {
    "unknown_top_level_key": (_config(colour="blue"), (), "127.0.0.1:0",
                              ["colour: unknown key"], None),
    "memory_capacity_0": (_with_stack(lambda s: s["memory"].update(capacity=0)), (),
                          "127.0.0.1:0", ["stacks.small.memory.capacity"], None),
    "unknown_block_type": (_with_stack(_block(3, type="bogus")), (), "127.0.0.1:0",
                           ["stacks.small.spec", "bogus"], None),
    "unknown_block_option": (_with_stack(_block(0, colour=5)), (), "127.0.0.1:0",
                             ["stacks.small.spec", "colour"], None),
    "odd_local_window": (_with_stack(_block(0, local_window=7)), (), "127.0.0.1:0",
                         ["stacks.small", "local_window"], None),
    "missing_spec_file": (_with_stack(_spec_file), (), "127.0.0.1:0",
                          ["stacks.small.spec_file", "nope.json"], None),
    "spec_and_spec_file": (_with_stack(lambda s: s.update(spec_file="x.json")), (),
                           "127.0.0.1:0", ["stacks.small", "spec_file"], None),
    "missing_weights": (_with_stack(lambda s: s.update(weights="missing.safetensors")), (),
                        "127.0.0.1:0", ["stacks.small.weights", "missing.safetensors"], None),
    "weights_of_another_stack": (_with_stack(lambda s: s.update(weights="wrong.safetensors")),
                                 (), "127.0.0.1:0", ["stacks.small", "do not match"], None),
    "memory_blocks_not_cross_memory": (
        _with_stack(lambda s: s.update(memory_blocks={0: {"capacity": 4}})), (),
        "127.0.0.1:0", ["stacks.small.memory_blocks.0"], None),
    "device_gpu": (_config(device="gpu"), (), "127.0.0.1:0", ["device", "gpu"], None),
    "flag_device_gpu": (_config(), ("--device", "gpu"), "127.0.0.1:0", ["--device", "gpu"],
                        None),
    "dtype_bfloat16_on_cpu": (_config(dtype="bfloat16"), (), "127.0.0.1:0", ["dtype"], None),
    "limits_unknown_key": (_config(limits={"max_sesions": 3}), (), "127.0.0.1:0",
                           ["limits.max_sesions: unknown key"], None),
    "limits_on_full": (_config(limits={"on_full": "drop"}), (), "127.0.0.1:0",
                       ["limits.on_full", "drop"], None),
    "limits_ttl_0": (_config(limits={"session_idle_ttl_seconds": 0}), (), "127.0.0.1:0",
                     ["limits.session_idle_ttl_seconds"], None),
    "no_stacks": (_config(stacks={}), (), "127.0.0.1:0", ["stacks"], None),
    "not_yaml": ("stacks: [unclosed\n", (), "127.0.0.1:0", ["not valid YAML"], None),
    "listen_without_port": (_config(listen="localhost"), (), None, ["listen", "host:port"],
                            None),
    "flag_log_level": (_config(), ("--log-level", "loud"), "127.0.0.1:0",
                       ["--log-level", "loud"], None),
    "unknown_flag": (_config(), ("--bogus", "1"), "127.0.0.1:0", ["--bogus"], None),
    "flag_listen_not_host_port": (_config(), (), "nonsense", ["listen"], None),
    "flag_listen_without_port": (_config(), (), "127.0.0.1", ["listen"], None),
    "listen_port_out_of_range": (_config(listen="127.0.0.1:99999"), (), None, ["listen"],
                                 None),
    "flag_listen_port_out_of_range": (_config(), (), "127.0.0.1:99999", ["listen"], None),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Case id -> OneShot, all cases run concurrently."""
    workdir = tmp_path_factory.mktemp("config-errors")
    save_file({"blocks.0.bogus": torch.zeros(3)}, str(workdir / "wrong.safetensors"),
              {"format": "pt"})

    def run(case_id):
        config, args, listen, _, _ = CASES[case_id]
        path = write_config(workdir / f"{case_id}.yaml", config)
        return case_id, run_server_once(path, args, listen=listen)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("case_id", [
    pytest.param(case_id, marks=pytest.mark.xfail(strict=True, reason=case[4]))
    if case[4] else case_id for case_id, case in CASES.items()])
def test_bad_config_exits_2_naming_the_key(outcomes, case_id):
    outcome = outcomes[case_id]
    stderr = outcome.stderr
    status = "started serving" if outcome.returncode is None else f"exit {outcome.returncode}"
    assert outcome.returncode == 2, f"{status}; stderr:\n{stderr}"
    for text in CASES[case_id][3]:
        assert text in stderr, f"stderr does not name {text!r}:\n{stderr}"
    assert outcome.seconds < QUICK, f"took {outcome.seconds:.1f} s"
    assert "stack ready" not in stderr, "a stack was built before the error was found"
    assert "hvlm-server listening" not in stderr


def test_missing_config_file_or_flag_exits_2(tmp_path):
    outcome = run_server_once(tmp_path / "absent.yaml")
    assert outcome.returncode == 2
    assert "--config" in outcome.stderr and "absent.yaml" in outcome.stderr

    done = subprocess.run([str(SERVER_BIN), "--listen", "127.0.0.1:0"], capture_output=True,
                          text=True, timeout=30, env=server_env())
    assert done.returncode == 2
    assert "--config is required" in done.stderr
