"""bench/gs_photos.py --toy: quality per step count, stream == all-on-device, the count
curve and the render-beside-photo PNG."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gs_photos_bench_toy(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gs_photos.py"), "--toy",
                        "--dir", str(tmp_path / "work")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "work" / "gs_photos_toy.json").read_text()) == result
    assert [e["step"] for e in result["heldout_per_step"]] == [0, 10, 20, 30]
    for e in result["heldout_per_step"]:
        assert 5 < e["psnr"] < 60 and 0 < e["ssim"] <= 1
    # training moves towards the photos before the opacity reset at step 20
    assert result["heldout_per_step"][1]["psnr"] > result["heldout_per_step"][0]["psnr"]
    ident = result["stream_vs_all_on_device"]
    assert ident["records_identical"] is True
    assert ident["psnr_stream"] == ident["psnr_all_on_device"]
    curve = result["gaussians_curve"]
    assert curve[0] == [0, 800] and curve[-1][0] == 30 and len(curve) >= 3
    assert curve[-1][1] == result["gaussians"]["end"] != 800  # densification changed it
    png = Path(result["heldout_view"]["png"])
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (80, 32)  # render | photograph
    assert result["lpips_test"] is None
