"""The nested model's metric alignment, on a ViT-S sized nested pair with the parity weights.

The expected output is computed here from the two branches run on their own, following the
official rule: metric depth = raw * mean focal / 300; least-squares scale of the any-view depth
onto it over confident non-sky pixels; sky set to min(P99, 200) with confidence 1.
"""

from __future__ import annotations

import torch
from da3_fixtures import build_state_dict, load_case

from da3_nerfstudio.model import DA3Model, ModelPreset, get_preset


def test_nested_alignment_matches_the_rule() -> None:
    preset = ModelPreset("test-nested", nested=(get_preset("test-small-gs").net, get_preset("test-small-metric").net))
    model = DA3Model(preset).double().eval()
    anyview = {k.replace("model.", "model.da3.", 1): v for k, v in build_state_dict("weights_small_gs.json").items()}
    metric = {
        k.replace("model.", "model.da3_metric.", 1): v for k, v in build_state_dict("weights_small_metric.json").items()
    }
    model.load_state_dict({**anyview, **metric}, strict=True)
    x = torch.from_numpy(load_case("small_gs_pair")["x"]).double()
    with torch.inference_mode():
        out = model(x)
        base = model.model.da3(x)
        sky_branch = model.model.da3_metric(x)

    focal = (base["intrinsics"][..., 0, 0] + base["intrinsics"][..., 1, 1]) / 2
    metric_depth = sky_branch["depth"] * focal[..., None, None] / 300
    non_sky = sky_branch["sky"] < 0.3
    conf = base["depth_conf"]
    mask = (conf >= torch.quantile(conf[non_sky], 0.5)) & non_sky & (metric_depth > 0.01) & (base["depth"] > 1e-3)
    d, m = base["depth"][mask], metric_depth[mask]
    scale = (d * m).sum() / (d * d).sum()

    assert torch.allclose(out["scale_factor"], scale, rtol=1e-12)
    expected_depth = base["depth"] * scale
    assert torch.allclose(out["depth"][non_sky], expected_depth[non_sky], rtol=1e-12)
    if (~non_sky).any():
        fill = torch.quantile(expected_depth[non_sky], 0.99).clamp(max=200)
        assert torch.allclose(out["depth"][~non_sky], fill.expand((~non_sky).sum()))
        assert (out["depth_conf"][~non_sky] == 1).all()
    assert torch.allclose(out["extrinsics"][..., :3], base["extrinsics"][..., :3])
    assert torch.allclose(out["extrinsics"][..., 3], base["extrinsics"][..., 3] * scale, rtol=1e-12)
    assert "sky" not in out
