"""The torch IVF search (gigasid.core.ivf): the compiled kernel's results, on any device."""

import numpy as np
import pytest
import torch

from gigasid.core import ivf, kernels
from gigasid.core import patches as P
from gigasid.core.denoisers import AnnDenoiser, AnnSettings

pytest.importorskip("numba")


def _queries(grid, n, seed, alpha=0.9):
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, grid.n, (n,), generator=g)
    return alpha * grid.gather(pick) + 0.1 * torch.randn(n, grid.dim, generator=g)


@pytest.fixture
def photo_index(photo):
    """An IVF-Flat index of a photograph's 7x7 patches (the sky and the suit hold many
    near-identical patches, hence tied distances) and projected queries."""
    grid = P.PatchGrid(photo[:, :96, :96], 7, 1)
    den = AnnDenoiser(grid, AnnSettings(k=5, index="ivf", pca_dim=16, nprobe=2,
                                        coarse_groups=0))
    x = _queries(grid, 400, 3)
    return den, x, den._project_queries(x, 0.9)


@pytest.mark.parametrize("nprobe,k", [(1, 3), (2, 5), (6, 16)])
def test_torch_search_is_the_compiled_search_bit_for_bit(photo_index, nprobe, k):
    """Same lists, same candidates, same order (ties to the smaller patch number) as the
    compiled kernel's exhaustive coarse step, and every row independent of its block."""
    den, _, q = photo_index
    layout = den._ivf_layout()
    lists = ivf.from_layout(*layout)
    ref = kernels.ivf_search(layout, q.numpy(), nprobe, k)
    got = ivf.search(lists, q, nprobe, k)
    assert np.array_equal(got.numpy(), ref)
    small = ivf.search(lists, q, nprobe, k, budget_bytes=1)  # one query per block
    assert torch.equal(small, got)
    parts = torch.cat([ivf.search(lists, q[a : a + 23], nprobe, k) for a in range(0, 400, 23)])
    assert torch.equal(parts, got)


def test_duplicate_vectors_tie_to_the_smaller_patch_number():
    """A list of identical vectors: the k smallest patch numbers, in order."""
    rows = torch.ones(50, 4)
    got = ivf.search(ivf.flat(rows), torch.zeros(3, 4), 1, 6)
    assert got.tolist() == [list(range(6))] * 3


def test_flat_lists_are_an_exhaustive_search(photo):
    """One list holding every vector: the float64 brute-force k nearest (distance ranks,
    so float32 rounding may only reorder equal distances)."""
    grid = P.PatchGrid(photo[:, :48, :48], 5, 1)
    rows = grid.block(0, grid.n)
    q = _queries(grid, 60, 5)
    got = ivf.search(ivf.flat(rows), q, 1, 8)
    d2 = ((q.double()[:, None, :] - rows.double()[None]) ** 2).sum(-1)
    want = d2.sort(dim=1).values[:, :8]
    assert torch.allclose(d2.gather(1, got), want, rtol=1e-5, atol=1e-9)


def test_lists_shorter_than_k_report_minus_one():
    rows = torch.randn(3, 4)
    got = ivf.search(ivf.flat(rows), torch.randn(2, 4), 1, 5)
    assert (got[:, 3:] == -1).all() and (got[:, :3] >= 0).all()


@pytest.mark.parametrize("nlist,nprobe,k", [(None, 2, 5), (400, 1, 12)])
def test_device_search_gives_the_denoiser_the_host_results(photo, nlist, nprobe, k):
    """``denoiser.search=device`` (the torch search, here on the CPU) returns the compiled
    host search's candidates, widening short lists the same way (the second case has lists
    of a few patches and k = 12), so the denoiser's estimates are the same bits."""
    grid = P.PatchGrid(photo[:, :64, :64], 7, 1)
    x = _queries(grid, 300, 8)
    out = {}
    for where in ("host", "device"):
        den = AnnDenoiser(grid, AnnSettings(k=k, index="ivf", nlist=nlist, pca_dim=16,
                                            nprobe=nprobe, coarse_groups=0, search=where))
        assert den._search_on_device() == (where == "device")
        out[where] = den.search(x, 0.9), den(x, 0.9, 0.2)
    assert torch.equal(out["device"][0], out["host"][0])
    assert torch.equal(out["device"][1], out["host"][1])


def test_flat_index_searched_on_the_device_is_exact(photo):
    grid = P.PatchGrid(photo[:, :40, :40], 5, 1)
    x = _queries(grid, 50, 2)
    host = AnnDenoiser(grid, AnnSettings(k=4, index="flat", pca_dim=0, search="host"))
    dev = AnnDenoiser(grid, AnnSettings(k=4, index="flat", pca_dim=0, search="device"))
    rows = grid.block(0, grid.n).double()
    d2 = ((x.double()[:, None, :] / 0.9 - rows[None]) ** 2).sum(-1)
    for den in (host, dev):
        got = den.search(x, 0.9)
        assert torch.allclose(d2.gather(1, got), d2.sort(1).values[:, :4], rtol=1e-5)


def test_distances_add_dimension_by_dimension():
    """Each squared difference is rounded, then added in dimension order (the compiled
    kernel's arithmetic), not reassociated or fused."""
    g = torch.Generator().manual_seed(1)
    q, cand_t = torch.randn(64, 31, generator=g), torch.randn(31, 64, 40, generator=g)
    ref = np.zeros((64, 40), dtype=np.float32)
    for e in range(31):
        t = q[:, e, None].numpy() - cand_t[e].numpy()
        ref = ref + t * t
    assert np.array_equal(ivf.sq_dists(q, cand_t).numpy(), ref)


def test_an_unknown_search_place_is_a_config_error():
    from pathlib import Path

    from gigasid.config import load_config
    from gigasid.errors import ConfigError

    cfg = Path(__file__).resolve().parents[1] / "configs" / "uncond.yaml"
    with pytest.raises(ConfigError, match="denoiser.search"):
        load_config(cfg, ["denoiser.search=gpu"])
    assert load_config(cfg, ["denoiser.search=device"]).denoiser.search == "device"


def _faiss_gpu() -> bool:
    import faiss

    return (torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources")
            and faiss.get_num_gpus() > 0)


def test_ivfpq_stays_on_the_host_without_a_faiss_gpu_build(photo):
    grid = P.PatchGrid(photo[:, :48, :48], 5, 1)
    den = AnnDenoiser(grid, AnnSettings(k=4, index="ivfpq", pca_dim=16, pq_m=8))
    assert not den._search_on_device() and den._gpu_index() is None
    assert den.search(_queries(grid, 20, 1), 0.9).shape == (20, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not _faiss_gpu(), reason="needs CUDA and a FAISS build with GPU support")
def test_ivfpq_on_a_cuda_job_is_searched_by_faiss_on_the_gpu(photo):
    """The GPU copy of an IVF-PQ index returns (nearly) the CPU index's candidates."""
    grid = P.PatchGrid(photo[:, :96, :96], 7, 1)
    s = AnnSettings(k=5, index="ivfpq", pca_dim=32, pq_m=16)
    x = _queries(grid, 500, 6)
    cpu = AnnDenoiser(grid, s).search(x, 0.9)
    gpu_den = AnnDenoiser(P.PatchGrid(photo[:, :96, :96].cuda(), 7, 1), s)
    assert gpu_den._gpu_index() is not None
    got = gpu_den.search(x.cuda(), 0.9).cpu()
    pairs = zip(cpu.tolist(), got.tolist(), strict=True)
    same = np.mean([len(set(a) & set(b)) / 5 for a, b in pairs])
    assert same > 0.9
