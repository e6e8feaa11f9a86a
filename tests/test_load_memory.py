"""Loading fills a meta-device model from memory-mapped files: peak memory stays near the weights' size."""

import subprocess
import sys
import textwrap

import pytest
from hf_oracle import SCOUT_LIKE

import herd
from herd.config import preset

MEASURE = textwrap.dedent("""
    import sys, torch, herd
    def hwm():
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
    herd.load(sys.argv[2])  # a tiny model first, so one-off import costs are not counted
    before = hwm()
    model = herd.load(sys.argv[1], dtype=None)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():  # touch every weight, so mapped pages are really resident
        total = sum(float(p.float().sum()) for p in model.parameters())
    print(weights, hwm() - before)
""")


@pytest.mark.slow
def test_peak_memory_near_weight_size(tmp_path):
    model = herd.build(preset("herd-50m"), seed=0)  # 45M parameters, 180 MB in float32
    herd.save(model, tmp_path / "big")
    herd.save(herd.build(SCOUT_LIKE, seed=0), tmp_path / "tiny")
    del model
    cmd = [sys.executable, "-c", MEASURE, str(tmp_path / "big"), str(tmp_path / "tiny")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    weights, peak_increase = map(int, out.stdout.split())
    assert weights > 150e6
    assert peak_increase < 1.3 * weights, f"peak grew by {peak_increase / 1e6:.0f} MB for {weights / 1e6:.0f} MB"
