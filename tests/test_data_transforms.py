"""3-D transforms: values, seeding, batching, devices, fill-before-window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ct3dzoo.data.transforms import (
    CenterCrop,
    Compose,
    RandomCrop,
    RandomFlip,
    RandomIntensity,
    RandomRotation,
    Resize,
    Window,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def coded(c: int = 1, d: int = 6, h: int = 8, w: int = 10) -> torch.Tensor:
    """Voxel value 10000*d + 100*h + w identifies its position."""
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    return (10000 * zz + 100 * yy + xx).float().expand(c, d, h, w).clone()


def test_center_crop_and_pad() -> None:
    x = coded()
    out = CenterCrop((4, None, 6))(x)
    assert out.shape == (1, 4, 8, 6)
    assert out[0, 0, 0, 0] == 10000 * 1 + 2  # d starts at 1, w at 2
    big = CenterCrop((6, 10, 10), fill=-1000)(x)
    assert big.shape == (1, 6, 10, 10)
    assert big[0, 0, 0, 0] == -1000 and big[0, 0, 1, 0] == 0  # one padded row on top


def test_random_crop_seeded_and_per_sample() -> None:
    x = coded().unsqueeze(0).repeat(8, 1, 1, 1, 1)
    a = RandomCrop((3, 4, 5), generator=torch.Generator().manual_seed(0))(x)
    b = RandomCrop((3, 4, 5), generator=torch.Generator().manual_seed(0))(x)
    assert a.shape == (8, 1, 3, 4, 5) and torch.equal(a, b)
    corners = a[:, 0, 0, 0, 0]
    assert len(set(corners.tolist())) > 1  # different boxes per sample
    for s in range(8):  # each crop is a contiguous block of the input
        c = int(corners[s])
        d0, h0, w0 = c // 10000, (c // 100) % 100, c % 100
        assert torch.equal(a[s, 0], x[s, 0, d0 : d0 + 3, h0 : h0 + 4, w0 : w0 + 5])
    torch.manual_seed(3)
    g1 = RandomCrop((3, 4, 5))(coded())
    torch.manual_seed(3)
    assert torch.equal(g1, RandomCrop((3, 4, 5))(coded()))  # global RNG when no generator


def test_random_flip() -> None:
    x = coded()
    assert torch.equal(RandomFlip(axes=(-1, -3), p=1.0)(x), x.flip(-1).flip(-3))
    assert torch.equal(RandomFlip(p=0.0)(x), x)
    xb = x.unsqueeze(0).repeat(16, 1, 1, 1, 1)
    out = RandomFlip(p=0.5, generator=torch.Generator().manual_seed(1))(xb)
    flipped = out[:, 0, 0, 0, 0] == 9
    assert 0 < int(flipped.sum()) < 16
    assert torch.equal(out[flipped], xb[flipped].flip(-1))
    assert torch.equal(out[~flipped], xb[~flipped])
    with pytest.raises(ValueError, match="axes"):
        RandomFlip(axes=(0,))


def test_rotation_90_matches_rot90_and_fills_air_before_window() -> None:
    x = torch.rand(2, 1, 3, 8, 8)
    r = RandomRotation((90, 90))(x)
    torch.testing.assert_close(r, torch.rot90(x, 1, (-2, -1)), atol=1e-3, rtol=0)
    soft = torch.zeros(1, 3, 16, 16)  # 0 HU everywhere
    rot = RandomRotation((45, 45), fill=-1000.0)(soft)
    assert rot[0, 1, 0, 0].item() == pytest.approx(-1000.0)  # corner: new voxel = air
    assert rot[0, 1, 8, 8].item() == pytest.approx(0.0, abs=1e-4)
    win = Compose([RandomRotation((45, 45)), Window("pe")])(soft)
    assert win[0, 1, 0, 0].item() == 0.0  # air is 0 in the pe window ...
    assert win[0, 1, 8, 8].item() == pytest.approx(0.1, abs=1e-5)  # ... tissue (0 HU) 0.1
    assert torch.equal(RandomRotation(30, p=0.0)(soft), soft)


def test_rotation_seeded_and_non_square() -> None:
    x = torch.rand(1, 4, 8, 12)
    g = torch.Generator().manual_seed(5)
    a = RandomRotation(10, generator=g)(x)
    b = RandomRotation(10, generator=torch.Generator().manual_seed(5))(x)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    r = RandomRotation((180, 180))(x)  # 180 degrees on a 8x12 plane = flip both axes
    torch.testing.assert_close(r, x.flip(-1).flip(-2), atol=1e-3, rtol=0)


def test_random_intensity() -> None:
    x = coded().unsqueeze(0).repeat(4, 1, 1, 1, 1)
    out = RandomIntensity(shift=20, scale=0, generator=torch.Generator().manual_seed(0))(x)
    diff = out - x
    for s in range(4):  # one constant offset per sample, within +-20 HU
        assert diff[s].max() - diff[s].min() < 1e-2 and abs(diff[s, 0, 0, 0, 0]) <= 20
    assert torch.equal(RandomIntensity(p=0.0)(x), x)
    sc = RandomIntensity(shift=0, scale=0.1, generator=torch.Generator().manual_seed(0))(x)
    ratio = sc[:, 0, 1, 1, 1] / x[:, 0, 1, 1, 1]
    assert ((ratio > 0.9) & (ratio < 1.1)).all() and (ratio != 1).any()


def test_resize_modes() -> None:
    x = torch.rand(1, 8, 16, 16)
    area = Resize((4, 8, 8))(x)
    torch.testing.assert_close(area, F.avg_pool3d(x.unsqueeze(0), 2).squeeze(0))
    odd = Resize((3, 5, 7))(x)
    torch.testing.assert_close(odd, F.adaptive_avg_pool3d(x, (3, 5, 7)))
    up = Resize((16, 8, 8))(x)  # D grows (trilinear) while H, W shrink (area)
    assert up.shape == (1, 16, 8, 8)
    tri = Resize((4, 8, None), mode="trilinear")(x.unsqueeze(0))
    assert tri.shape == (1, 1, 4, 8, 16)
    assert Resize((8, 16, 16))(x) is x


def test_crop_then_resize_equals_paper_resize_then_crop() -> None:
    """resize 2x (area) then centre-crop == centre-crop 2x then resize (the benchmark's fusion)."""
    x = torch.randn(1, 8, 32, 32) * 500
    paper = CenterCrop((None, 14, 14))(Resize((4, 16, 16))(x))
    fused = Resize((4, 14, 14))(CenterCrop((None, 28, 28))(x))
    torch.testing.assert_close(fused, paper)


def test_window_transform() -> None:
    hu = torch.full((1, 2, 3, 3), 400.0)
    out = Window(["lung", "pe", "mediastinal"])(hu)
    assert out.shape == (3, 2, 3, 3)
    assert out[:, 0, 0, 0].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert Window("pe")(hu.unsqueeze(0)).shape == (1, 1, 2, 3, 3)
    with pytest.raises(ValueError, match="single HU channel"):
        Window("pe")(torch.zeros(3, 2, 3, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_on_device_and_compose_seeded(device: str) -> None:
    x = (torch.rand(2, 1, 10, 20, 20) * 2000 - 1000).to(device)

    def pipe(seed: int) -> Compose:
        g = torch.Generator().manual_seed(seed)
        return Compose(
            [
                RandomCrop((8, 16, 16), generator=g),
                RandomFlip(axes=(-1, -2), generator=g),
                RandomRotation(10, generator=g),
                RandomIntensity(generator=g),
                Resize((4, 8, 8)),
                Window(["lung", "pe"]),
            ]
        )

    a, b = pipe(0)(x), pipe(0)(x)
    assert a.device.type == device and a.shape == (2, 2, 4, 8, 8)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert "RandomRotation" in repr(pipe(0))
