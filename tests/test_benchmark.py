"""The benchmarks run end to end and end with their machine-readable lines (no timing is asserted). They run
at their smallest sizes: the test proves the scripts work and print their tables, not how fast anything is."""

import os
import re
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import throughput  # noqa: E402


def test_throughput_benchmark_prints_its_table_and_speedup_line_last():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--smoke",
         "--variant", "plain:model.fast_layers=false,train.batch_shards=1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_tutorial=\d+\.\d{3}", lines[-1])
    rows = {line.split()[0]: line.split() for line in lines
            if re.match(r"(tutorial|ours|plain|mixed_bfloat16)\s+\d", line)}
    bf16 = throughput.cpu_has_bf16()
    assert set(rows) == {"tutorial", "ours", "plain"} | ({"mixed_bfloat16"} if bf16 else set())
    assert any(re.fullmatch(r"speedup_mixed_bfloat16_vs_tutorial=\d+\.\d{3}", line) for line in lines) == bf16
    assert float(rows["tutorial"][3]) == 1.0  # the tutorial's ratio to itself
    assert float(rows["ours"][4]) == 1.0
    assert "plain: 1 batch shard(s)" in result.stdout
    assert any(line.strip().startswith("conv2d_transpose_2 (TapMatmulConv2DTranspose)") for line in lines)


def test_end_to_end_benchmark_prints_the_phases_and_its_lines_last():
    from conftest import QUICK

    sets = [word for item in [*QUICK, "train.epochs=2"] for word in ("--set", item)]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "end_to_end.py"), "--no-plain",
                             "--no-sweep", *sets], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    wall = float(re.fullmatch(r"default_run_seconds=(\d+\.\d)", lines[-2]).group(1))
    overhead = float(re.fullmatch(r"overhead_seconds=(\d+\.\d)", lines[-1]).group(1))
    phases = {line[:52].strip(): float(line.split()[-1]) for line in lines if re.search(r"\s\d+\.\d$", line)}
    assert phases["wall time"] == wall and 0 < overhead < wall
    assert abs(wall - phases["gradient steps"] - overhead) <= 0.11  # Rounded to 0.1 s each.
    parts = [value for text, value in phases.items() if not text.startswith(("wall time", "overhead"))]
    assert len(parts) == 7 and all(value >= 0 for value in parts) and abs(sum(parts) - wall) <= 0.4
