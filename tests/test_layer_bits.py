"""Per-layer widths from a bits file or a quantized folder, fed back into the simulator."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit.amdahl import overall_speedup
from llm1bit.cli import main
from llm1bit.errors import UserError
from llm1bit.format.safetensors import safetensors_sizes
from llm1bit.hardware import load_hardware
from llm1bit.layer_widths import load_quantized_model, module_names, with_bits_config
from llm1bit.models import load_hf_config
from llm1bit.sweep import Point, run_points
from llm1bit.workload import MATMUL_FREE, build_workload

pytest.importorskip("torch")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """stories260K quantized by the real pipeline: 3-bit lat (group 128) and 4-bit gptq."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    root = tmp_path_factory.mktemp("quantized")
    common = [
        "--model",
        SHARED_DATA / "models" / "stories260K",
        "--calib",
        SHARED_DATA / "tinystories" / "valid-head.txt",
    ]
    common += ["--nsamples", 2, "--seqlen", 64]
    out = {}
    for tag, args in (("lat3", ["--method", "shiftaddllm", "--mode", "lat", "--wbits", 3, "--groupsize", 128]),
                      ("gptq4", ["--method", "gptq", "--wbits", 4, "--groupsize", 128])):  # fmt: skip
        res = invoke("quantize", *common, *args, "-o", root / tag)
        assert res.exit_code == 0, res.output
        out[tag] = root / tag
    return out


def test_simulated_weight_bytes_are_the_packed_bytes(folders):
    for tag, fmt in (("lat3", "bcq-lat"), ("gptq4", "int")):
        folder = folders[tag]
        model = load_quantized_model(folder)
        qc = json.loads((folder / "config.json").read_text())["quantization_config"]
        sizes = safetensors_sizes(folder / "model.safetensors")
        (split,) = run_points([Point(model, load_hardware("edge"), 256)], "analytic")
        by_bits = {}
        for layer in split.layers:
            if layer.gemm.part == MATMUL_FREE:
                by_bits.setdefault((layer.gemm.name, layer.gemm.bits_moved), layer)
        assert sum(1 for x in split.layers if x.gemm.part == MATMUL_FREE) >= 7
        for name, meta in qc["modules"].items():
            n, k = meta["shape"]
            packed = sum(v for t, v in sizes.items() if t.startswith(name + ".") and not t.endswith(".bias"))
            block, proj = int(name.split(".")[2]), name.rsplit(".", 1)[1].replace("o_proj", "out_proj")
            (pb,) = [pb for p, pb in model.proj_bits[block] if p == proj]
            assert (pb.bits, pb.fmt) == (meta["bits"], fmt)
            layer = by_bits[(proj, pb.bits_moved)]
            assert layer.counters.dram_filter_reads == n * k  # each weight read once per decode step
            # the filter's DRAM bytes per step: exactly the packed bytes (up to float rounding)
            assert layer.counters.dram_filter_reads * layer.cost.filter_bits / 8 == pytest.approx(
                packed, rel=1e-12
            )


def test_quantized_cli_and_amdahl(folders):
    res = invoke(
        "simulate", "--quantized", folders["lat3"], "--hw", "edge", "--backend", "analytic", "--json"
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    free = [x for x in out["layers"] if x["part"] == "matmul_free"]
    assert {x["weight_bits"] for x in free} == {3.0} and all(3.5 < x["filter_bits"] < 4.6 for x in free)
    assert "per-layer weight bits 3" in out["config"]["architecture"]
    res = invoke("amdahl", "--quantized", folders["gptq4"], "--hw", "edge", "--backend", "analytic", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)["derived"]
    assert d["s_partial_energy"] > 1
    assert d["s_total_time"] == pytest.approx(
        overall_speedup(d["fraction_time_16bit"], d["s_partial_time"]), rel=1e-12
    )


def test_bits_config_splits_blocks(tmp_path, shared_data):
    config = shared_data / "models" / "stories260K"
    bits = tmp_path / "alloc.json"
    layers = {
        "model.layers.0.mlp.down_proj": 2,
        "model.layers.4.mlp.down_proj": 2,
        "model.layers.2.self_attn.q_proj": 3,
    }
    bits.write_text(json.dumps({"layers": layers, "settings": {"mode": "lat"}}))
    model = with_bits_config(load_hf_config(config), bits)
    gemms = [g for g in build_workload(model, 128) if g.part == MATMUL_FREE]
    down = sorted(
        (g.count, g.weight_bits or 16, g.weight_format or "-") for g in gemms if g.name == "down_proj"
    )
    # blocks 0 and 4 (2-bit down_proj), block 2 (3-bit q_proj, 16-bit down_proj), blocks 1 and 3 (all 16-bit)
    assert down == [(1, 16, "-"), (2, 2.0, "bcq-lat"), (2, 16, "-")]
    q = sorted((g.count, g.weight_bits or 16) for g in gemms if g.name == "q_proj")
    assert q == [(1, 3.0), (2, 16), (2, 16)]
    for name in ("k_proj", "gate_proj", "up_proj"):
        assert sum(g.count for g in gemms if g.name == name) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "opt-350m", "--bits-config", "{bits}"],
            "not with the built-in paper model",
        ),
        (
            ["--model", "{model}", "--bits-config", "{bad}"],
            "does not have (did you mean model.layers.0.mlp.down_proj",
        ),
        (["--quantized", "{model}"], "not an llm1bit quantized folder"),
        (
            ["--quantized", "{model}", "--model", "opt-350m"],
            "--quantized takes the place of --model",
        ),
        (["--quantized", "{missing}"], "not a folder written by `llm1bit quantize`"),
    ],
)
def test_bad_layer_bits_input(tmp_path, shared_data, args, message):
    bits = tmp_path / "bits.json"
    bits.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_proj": 2}}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_prj": 2}}))
    subs = {
        "bits": bits,
        "bad": bad,
        "model": shared_data / "models" / "stories260K",
        "missing": tmp_path / "nope",
    }
    res = invoke("simulate", "--backend", "analytic", *[a.format(**subs) for a in args])
    assert res.exit_code != 0 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_truncated_or_mismatched_checkpoint(folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folders["lat3"], broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated safetensors file"):
        load_quantized_model(broken)
    (broken / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(UserError, match="no header length"):
        load_quantized_model(broken)
    shutil.copy(folders["lat3"] / "model.safetensors", broken / "model.safetensors")
    config = json.loads((broken / "config.json").read_text())
    name = next(iter(config["quantization_config"]["modules"]))
    config["quantization_config"]["modules"][name]["shape"] = [7, 7]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"has shape \[7, 7\], the config implies"):
        load_quantized_model(broken)


@pytest.mark.parametrize("command", ["simulate", "amdahl", "sweep"])
@pytest.mark.parametrize("flag", [("--weight-bits", "2"), ("--weight-format", "int")])
def test_a_flag_the_folder_overrides_is_refused_not_relabelled(folders, tmp_path, command, flag):
    out = ["-o", tmp_path / "o.csv"] if command == "sweep" else []
    res = invoke(command, "--quantized", folders["gptq4"], "--backend", "analytic", *flag, *out)
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
    assert (
        f"{flag[0]} {flag[1]}: --quantized {folders['gptq4']} gives every projection its own width"
        in res.output
    )
    assert list(tmp_path.iterdir()) == []


def test_amdahl_table_labels_a_folder_by_its_own_widths(folders):
    res = invoke("amdahl", "--quantized", folders["gptq4"], "--backend", "analytic", "--seq-len", 256)
    assert res.exit_code == 0, res.output
    assert "derived at weights per layer 4-bit int," in " ".join(res.output.split())


def test_bits_config_overriding_every_projection_refuses_weight_bits(tmp_path, shared_data):
    config = shared_data / "models" / "stories260K"
    model = load_hf_config(config)
    every = dict.fromkeys(module_names(model), 2)
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    full.write_text(json.dumps({"layers": every}))
    part.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_proj": 2}}))
    res = invoke(
        "simulate", "--model", config, "--bits-config", full, "--weight-bits", 4, "--backend", "analytic"
    )
    assert res.exit_code != 0 and f"--bits-config {full} gives every projection its own width" in res.output
    res = invoke(
        "simulate", "--model", config, "--bits-config", full, "--backend", "analytic", "--seq-len", 256
    )
    assert res.exit_code == 0 and "Weights per layer 2-bit bcq-lat, activations" in " ".join(
        res.output.split()
    )
    res = invoke("simulate", "--model", config, "--bits-config", part, "--weight-bits", 4, "--backend", "analytic",
                 "--seq-len", 256)  # fmt: skip
    assert res.exit_code == 0, res.output  # the others take --weight-bits, and the summary says so
    assert "Weights per layer 2-bit bcq-lat (others 4-bit int)" in " ".join(res.output.split())


def test_quantized_config_naming_a_module_twice_is_refused(folders, tmp_path):
    broken = tmp_path / "dup"
    shutil.copytree(folders["gptq4"], broken)
    text = (broken / "config.json").read_text()
    config = json.loads(text)
    name, meta = next(iter(config["quantization_config"]["modules"].items()))
    entry = json.dumps(name) + ": " + json.dumps(meta) + ", "
    text = text.replace('"modules": {', '"modules": {' + entry, 1)
    (broken / "config.json").write_text(text)
    res = invoke("simulate", "--quantized", broken, "--backend", "analytic")
    assert res.exit_code != 0 and f"key {name!r} appears twice" in res.output, res.output


def test_a_quantized_folder_given_as_model_says_what_it_prices(folders):
    res = invoke("simulate", "--model", folders["gptq4"], "--backend", "analytic", "--seq-len", 256, "--json")
    assert res.exit_code == 0, res.output
    assert "an llm1bit quantized folder given as a model is simulated as its architecture" in res.stderr
    assert json.loads(res.stdout)["config"]["precision"]["weight_bits"] == 16.0


def _simulated(*args) -> dict:
    # stories260K is compute-bound at cloud's bandwidth: at 0.05 GB/s its weight bytes decide the time
    res = invoke("simulate", *args, "--hw", "cloud", "--dram-gbps", 0.05, "--backend", "analytic", "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_bits_config_prices_the_bytes_its_settings_store(folders, tmp_path, shared_data):
    """A bits file's mode and groupsize decide the bytes `simulate --bits-config` prices: the widths of a real lat
    group-128 folder, given as a bits file with those settings, simulate exactly as the folder does; the same
    widths at groupsize -1 (8 x N/8-row blocks, here 8 x 8) move other bytes."""
    folder = folders["lat3"]
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    layers = {name: meta["bits"] for name, meta in qc["modules"].items()}
    config = shared_data / "models" / "stories260K"
    stored = _simulated("--quantized", folder)
    for groupsize, same in ((128, True), (-1, False)):
        bits = tmp_path / f"g{groupsize}.json"
        bits.write_text(json.dumps({"layers": layers, "settings": {"mode": "lat", "groupsize": groupsize}}))
        priced = _simulated("--model", config, "--bits-config", bits)
        for key in ("tokens_per_s", "energy_j"):
            assert (priced[key] == pytest.approx(stored[key], rel=1e-12)) is same, (groupsize, key)
        moved = {(x["name"], x["filter_bits"]) for x in priced["layers"] if x["part"] == "matmul_free"}
        assert (
            moved == {(x["name"], x["filter_bits"]) for x in stored["layers"] if x["part"] == "matmul_free"}
        ) is same
    # lat, groupsize -1: 3 x 64 x ceil(172/8) code bytes + ceil(172/8) x 8 blocks x 3 planes x 3 terms, per down_proj
    (down,) = {x["filter_bits"] for x in priced["layers"] if x["name"] == "down_proj"}
    assert down == pytest.approx(8 * (3 * 64 * 22 + 22 * 8 * 3 * 3) / (64 * 172), rel=1e-12)


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"groupsize": 128}, "settings.groupsize without settings.mode"),
        ({"mode": "lat", "groupsize": 12}, "settings.groupsize 12 must be a multiple of 8 in lat mode"),
        ({"mode": "lat", "groupsize": "128"}, "settings.groupsize '128'; allowed: -1 or a positive integer"),
        ({"mode": "acc", "groupsize": 0}, "settings.groupsize 0; allowed: -1 or a positive integer"),
        ({"mode": "acc", "apot_terms": 9}, "settings.apot_terms 9; allowed: an integer 1 to 8"),
        ({"mode": "acc", "incoherence": "yes"}, "settings.incoherence 'yes'; allowed: true or false"),
    ],
)
def test_bits_config_storage_settings_are_checked(tmp_path, shared_data, settings, match):
    bits = tmp_path / "alloc.json"
    bits.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_proj": 2}, "settings": settings}))
    res = invoke("simulate", "--model", shared_data / "models" / "stories260K", "--bits-config", bits,
                 "--backend", "analytic")  # fmt: skip
    assert res.exit_code == 1 and match in res.output and len(res.output.strip().splitlines()) == 1, (
        res.output
    )


def test_quantize_refuses_settings_that_contradict_the_bits_file(tmp_path, shared_data):
    bits = tmp_path / "alloc.json"
    settings = {"mode": "lat", "groupsize": 128, "apot_terms": 3, "incoherence": False}
    bits.write_text(json.dumps({"layers": {"model.layers.0.mlp.down_proj": 2}, "settings": settings}))
    common = ["quantize", "--model", shared_data / "models" / "stories260K", "--calib",
              shared_data / "tinystories" / "valid-head.txt", "--bits-config", bits]  # fmt: skip
    for args, match in (
        (["--mode", "lat"], "chosen for settings.groupsize 128, but this run has groupsize -1 (--groupsize)"),
        (["--groupsize", 128], 'chosen for settings.mode "lat", but this run has mode "acc" (--mode)'),
        (["--mode", "lat", "--groupsize", 128, "--apot-terms", 2], "settings.apot_terms 3, but this run has"),
    ):
        res = invoke(*common, *args, "-o", tmp_path / "q")
        assert res.exit_code == 1 and match in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "q").exists()
