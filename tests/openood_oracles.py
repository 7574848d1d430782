"""Test oracles: OpenOOD v1.5's postprocessor formulas, transcribed from Jingkang50/OpenOOD at commit
3c35632ee91b54b09d1f085d04f94744cece7d0b (openood/postprocessors/<name>_postprocessor.py and, for
ASH and SCALE, openood/networks/ash_net.py and scale_net.py), deliberately close to that code.

Each oracle takes what the reference's ``setup`` reads (ID-train features and labels; the fc layer's
weight and bias, as ``net.get_fc()`` returns them) and what ``postprocess`` reads (the test
features; the logits are ``features @ w.T + b``), all numpy float64, and returns the confidence.
The only changes: float64 throughout (OpenOOD fits its covariances on ``astype(np.float32)``), no
network (the features are given), faiss's inner-product search written as a sort, and the empty
classes dropped by the caller (see test_scores_openood.py). ``ORACLES`` maps each ported score to
its oracle; a registered OpenOOD port without one fails the tests.
"""

from __future__ import annotations

import numpy as np
import sklearn.covariance
import torch
from numpy.linalg import norm, pinv
from scipy.special import logsumexp

COMMIT = "3c35632ee91b54b09d1f085d04f94744cece7d0b"


def mds(train_feats, train_labels, num_classes, w, b, feats, cfg):
    """mds_postprocessor.py: setup + postprocess."""
    all_feats, all_labels = torch.from_numpy(train_feats), torch.from_numpy(train_labels)
    class_mean, centered_data = [], []
    for c in range(num_classes):
        class_samples = all_feats[all_labels.eq(c)].data
        class_mean.append(class_samples.mean(0))
        centered_data.append(class_samples - class_mean[c].view(1, -1))
    class_mean = torch.stack(class_mean)
    group_lasso = sklearn.covariance.EmpiricalCovariance(assume_centered=False)
    group_lasso.fit(torch.cat(centered_data).cpu().numpy())
    precision = torch.from_numpy(group_lasso.precision_)
    features = torch.from_numpy(feats)
    class_scores = torch.zeros((features.shape[0], num_classes), dtype=torch.float64)
    for c in range(num_classes):
        tensor = features.cpu() - class_mean[c].view(1, -1)
        class_scores[:, c] = -torch.matmul(torch.matmul(tensor, precision), tensor.t()).diag()
    return torch.max(class_scores, dim=1)[0].numpy()


def rmds(train_feats, train_labels, num_classes, w, b, feats, cfg):
    """rmds_postprocessor.py: setup + postprocess."""
    all_feats, all_labels = torch.from_numpy(train_feats), torch.from_numpy(train_labels)
    class_mean, centered_data = [], []
    for c in range(num_classes):
        class_samples = all_feats[all_labels.eq(c)].data
        class_mean.append(class_samples.mean(0))
        centered_data.append(class_samples - class_mean[c].view(1, -1))
    class_mean = torch.stack(class_mean)
    group_lasso = sklearn.covariance.EmpiricalCovariance(assume_centered=False)
    group_lasso.fit(torch.cat(centered_data).cpu().numpy())
    precision = torch.from_numpy(group_lasso.precision_)
    whole_mean = all_feats.mean(0)
    centered_data = all_feats - whole_mean.view(1, -1)
    group_lasso = sklearn.covariance.EmpiricalCovariance(assume_centered=False)
    group_lasso.fit(centered_data.cpu().numpy())
    whole_precision = torch.from_numpy(group_lasso.precision_)

    features = torch.from_numpy(feats)
    tensor1 = features.cpu() - whole_mean.view(1, -1)
    background_scores = -torch.matmul(torch.matmul(tensor1, whole_precision), tensor1.t()).diag()
    class_scores = torch.zeros((features.shape[0], num_classes), dtype=torch.float64)
    for c in range(num_classes):
        tensor = features.cpu() - class_mean[c].view(1, -1)
        class_scores[:, c] = -torch.matmul(torch.matmul(tensor, precision), tensor.t()).diag()
        class_scores[:, c] = class_scores[:, c] - background_scores
    return torch.max(class_scores, dim=1)[0].numpy()


def vim(train_feats, train_labels, num_classes, w, b, feats, cfg, dim):
    """vim_postprocessor.py: setup, _compute_NS_and_alpha, postprocess (``dim`` as given)."""
    feature_id_train = train_feats
    logit_id_train = feature_id_train @ w.T + b
    u = -np.matmul(pinv(w), b)
    ec = sklearn.covariance.EmpiricalCovariance(assume_centered=True)
    ec.fit(feature_id_train - u)
    eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
    NS = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)[dim:]]).T)
    vlogit_id_train = norm(np.matmul(feature_id_train - u, NS), axis=-1)
    alpha = logit_id_train.max(axis=-1).mean() / vlogit_id_train.mean()
    logit_ood = feats @ w.T + b
    energy_ood = logsumexp(logit_ood, axis=-1)
    vlogit_ood = norm(np.matmul(feats - u, NS), axis=-1) * alpha
    return -vlogit_ood + energy_ood


def react(train_feats, train_labels, num_classes, w, b, feats, cfg):
    """react_postprocessor.py (threshold over the given ID features) + react_net.forward_threshold."""
    threshold = np.percentile(train_feats.flatten(), cfg.react_percentile)
    feature = torch.from_numpy(feats).clip(max=threshold)
    output = feature @ torch.from_numpy(w).T + torch.from_numpy(b)
    return torch.logsumexp(output, dim=1).numpy()


def _ash_p(x, percentile=65, topk=torch.topk):
    """ash_net.ash_p."""
    assert x.dim() == 4
    assert 0 <= percentile <= 100
    b, c, h, w = x.shape
    n = x.shape[1:].numel()
    k = n - int(np.round(n * percentile / 100.0))
    t = x.view((b, c * h * w))
    v, i = topk(t, k, dim=1)
    t.zero_().scatter_(dim=1, index=i, src=v)
    return x


def _ash_b(x, percentile=65, topk=torch.topk):
    """ash_net.ash_b (what OpenOOD's ``ash`` postprocessor runs)."""
    assert x.dim() == 4
    assert 0 <= percentile <= 100
    b, c, h, w = x.shape
    s1 = x.sum(dim=[1, 2, 3])
    n = x.shape[1:].numel()
    k = n - int(np.round(n * percentile / 100.0))
    t = x.view((b, c * h * w))
    v, i = topk(t, k, dim=1)
    fill = s1 / k
    fill = fill.unsqueeze(dim=1).expand(v.shape)
    t.zero_().scatter_(dim=1, index=i, src=fill)
    return x


def _ash_s(x, percentile=65, topk=torch.topk):
    """ash_net.ash_s."""
    assert x.dim() == 4
    assert 0 <= percentile <= 100
    b, c, h, w = x.shape
    s1 = x.sum(dim=[1, 2, 3])
    n = x.shape[1:].numel()
    k = n - int(np.round(n * percentile / 100.0))
    t = x.view((b, c * h * w))
    v, i = topk(t, k, dim=1)
    t.zero_().scatter_(dim=1, index=i, src=v)
    s2 = x.sum(dim=[1, 2, 3])
    scale = s1 / s2
    x = x * torch.exp(scale[:, None, None, None])
    return x


def _scale(x, percentile=65, topk=torch.topk):
    """scale_net.scale."""
    input = x.clone()
    assert x.dim() == 4
    assert 0 <= percentile <= 100
    b, c, h, w = x.shape
    s1 = x.sum(dim=[1, 2, 3])
    n = x.shape[1:].numel()
    k = n - int(np.round(n * percentile / 100.0))
    t = x.view((b, c * h * w))
    v, i = topk(t, k, dim=1)
    t.zero_().scatter_(dim=1, index=i, src=v)
    s2 = x.sum(dim=[1, 2, 3])
    scale = s1 / s2
    return input * torch.exp(scale[:, None, None, None])


def lowest_index_topk(t, k, dim=1):
    """torch.topk with ties taken lowest index first: the harness's rule where torch.topk's order
    among equal entries (so which tied entry ASH keeps) is unspecified; for inputs with ties at the cut."""
    order = torch.sort(t, dim=dim, descending=True, stable=True).indices[:, :k]
    return torch.gather(t, dim, order), order


def _forward_threshold(prune, feats, w, b, percentile, topk):
    """ash_net / scale_net forward_threshold on given features, then the postprocessor's energy."""
    feature = torch.from_numpy(feats.copy())
    feature = prune(feature.view(feature.size(0), -1, 1, 1), percentile, topk)
    feature = feature.view(feature.size(0), -1)
    logits_cls = feature @ torch.from_numpy(w).T + torch.from_numpy(b)
    return torch.logsumexp(logits_cls, dim=1).numpy()


def ash_p(train_feats, train_labels, num_classes, w, b, feats, cfg, topk=torch.topk):
    return _forward_threshold(_ash_p, feats, w, b, cfg.ash_percentile, topk)


def ash_b(train_feats, train_labels, num_classes, w, b, feats, cfg, topk=torch.topk):
    return _forward_threshold(_ash_b, feats, w, b, cfg.ash_percentile, topk)


def ash_s(train_feats, train_labels, num_classes, w, b, feats, cfg, topk=torch.topk):
    return _forward_threshold(_ash_s, feats, w, b, cfg.ash_percentile, topk)


def scale(train_feats, train_labels, num_classes, w, b, feats, cfg, topk=torch.topk):
    return _forward_threshold(_scale, feats, w, b, cfg.scale_percentile, topk)


def dice(train_feats, train_labels, num_classes, w, b, feats, cfg):
    """dice_postprocessor.py: setup (mean activation), calculate_mask, postprocess."""
    mean_act = train_feats.mean(0)
    contrib = mean_act[None, :] * w
    thresh = np.percentile(contrib, cfg.dice_p)
    mask = torch.Tensor((contrib > thresh)).double()
    masked_w = torch.from_numpy(w) * mask
    feature = torch.from_numpy(feats)
    vote = feature[:, None, :] * masked_w
    output = vote.sum(2) + torch.from_numpy(b)
    return torch.logsumexp(output, dim=1).numpy()


def gen(train_feats, train_labels, num_classes, w, b, feats, cfg):
    """gen_postprocessor.py: softmax of the logits, generalized_entropy(gamma, M)."""
    output = torch.from_numpy(feats @ w.T + b)
    probs = torch.softmax(output, dim=1)
    probs_sorted = torch.sort(probs, dim=1)[0][:, -cfg.gen_m:]
    scores = torch.sum(probs_sorted ** cfg.gen_gamma * (1 - probs_sorted) ** cfg.gen_gamma, dim=1)
    return (-scores).numpy()


def _normalizer(x):
    """nnguide_postprocessor.normalizer (its + 1e-10 after the division included)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10


def nnguide(train_feats, train_labels, num_classes, w, b, feats, cfg):
    """nnguide_postprocessor.py: the bank guide, knn_score (faiss IndexFlatIP: top-k inner products)."""
    bank_feas = _normalizer(train_feats)
    bank_confs = logsumexp(train_feats @ w.T + b, axis=-1)
    bank_guide = bank_feas * bank_confs[:, None]
    feas_norm = _normalizer(feats)
    energy = logsumexp(feats @ w.T + b, axis=-1)
    k = min(cfg.nnguide_k, bank_guide.shape[0])
    D = -np.sort(-(feas_norm @ bank_guide.T), axis=1)[:, :k]
    conf = np.array(D.mean(axis=1))
    return conf * energy


ORACLES = {"mds": mds, "rmds": rmds, "vim": vim, "react": react, "ash_p": ash_p, "ash_b": ash_b, "ash_s": ash_s,
           "dice": dice, "gen": gen, "scale": scale, "nnguide": nnguide}
