import torch

from iwm.eval import knn_accuracy


def test_knn_on_separable_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 5
    ytr, yte = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (100,), generator=g)
    xtr = centers[ytr] + torch.randn(200, 16, generator=g)
    xte = centers[yte] + torch.randn(100, 16, generator=g)
    assert knn_accuracy(xtr, ytr, xte, yte, k=10) > 0.95
    shuffled = ytr[torch.randperm(200, generator=g)]
    assert knn_accuracy(xtr, shuffled, xte, yte, k=10) < 0.5
