"""Online k-NN probe: do the learnt representations separate a labelled property of the data?

During pretraining no segmentation labels are used, but a property every slice has for
free can tell whether the representation is improving: the slice's position in its
volume (three bins, one end / middle / other end — base / mid / apex for short-axis
cardiac stacks), or its domain, task or group in multi-domain data. The probe embeds a
"bank" set and a "query" set with the model's ``embed`` and classifies each query by a
cosine-similarity-weighted vote of its k nearest bank embeddings (Wu et al. 2018, InstDisc;
as used by DINO).

- :func:`knn_accuracy`: the classifier on given embeddings.
- :func:`embed_dataset`: embeddings and integer tags of a dataset, batched, eval mode, no grad.
- :func:`position_bins`, :func:`dataset_labels`: labels for the probe.
- :func:`knn_probe`: the three together, one call per evaluation.
- :func:`knn_evaluate`: what the training loop logs — BatchNorm statistics recomputed on the
  bank first, the accuracy, and both chance levels of the same bank and query.

Chance levels. Slice-position classes are not balanced (the middle bin of a short-axis stack
holds more slices), so "1/3" is not what an uninformative representation scores: always
guessing the bank's majority class scores the query's share of that class
(``chance_majority``), and guessing at random with the bank's class frequencies scores
``sum_c p_bank(c) p_query(c)`` (``chance_frequency``). A k-NN accuracy between or near these two
says nothing about the representation.

BatchNorm. A network's running statistics may not describe the images at hand — a fresh
random encoder's are the defaults (mean 0, variance 1), which collapses its features onto
nearly one direction. :func:`knn_evaluate` therefore recomputes them on the bank (training
images) for the current weights, at every evaluation including step 0, and puts them back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medssl_utils.errors import ParameterError
from medssl_utils.models.batchnorm import recomputed_bn
from medssl_utils.validate import check_int, check_number

__all__ = ["LABELS", "chance_levels", "dataset_labels", "embed_dataset", "knn_accuracy", "knn_evaluate",
           "knn_probe", "position_bins"]

LABELS = ("position", "domain", "task", "group")


def _check_pair(name: str, emb, labels) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or not emb.is_floating_point():
        got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ParameterError(f"{name}_emb must be a float tensor (N, D); got {got}")
    labels = torch.as_tensor(labels)
    if labels.shape != (emb.shape[0],) or labels.is_floating_point():
        raise ParameterError(f"{name}_labels must be integer (N,) with N={emb.shape[0]}; got "
                             f"{labels.dtype} {tuple(labels.shape)}")
    if emb.shape[0] == 0:
        raise ParameterError(f"{name}_emb is empty")
    if int(labels.min()) < 0:
        raise ParameterError(f"{name}_labels must be >= 0")
    return emb, labels.long()


@torch.no_grad()
def knn_accuracy(train_emb: torch.Tensor, train_labels, test_emb: torch.Tensor, test_labels, k: int = 20,
                 temperature: float = 0.07, chunk_size: int = 1024) -> float:
    """Accuracy of a weighted k-NN classifier with cosine similarity.

    Args:
        train_emb: ``(N, D)`` bank embeddings; train_labels: ``(N,)`` int class ids >= 0.
        test_emb: ``(M, D)`` query embeddings; test_labels: ``(M,)`` int class ids.
        k: neighbours per query (capped at N).
        temperature: each neighbour votes for its class with weight ``exp(cos / temperature)``.
        chunk_size: queries scored at once (bounds memory at ``chunk_size * N`` floats).

    Embeddings are L2-normalised first. The predicted class is the one with the largest
    summed weight; returns the fraction of queries predicted correctly, in [0, 1]. With
    uninformative embeddings this is about the frequency of the most common class.
    """
    train_emb, train_labels = _check_pair("train", train_emb, train_labels)
    test_emb, test_labels = _check_pair("test", test_emb, test_labels)
    if train_emb.shape[1] != test_emb.shape[1]:
        raise ParameterError(f"train_emb has D={train_emb.shape[1]} but test_emb has D={test_emb.shape[1]}")
    check_int("k", k, 1)
    check_number("temperature", temperature, 0, low_open=True)

    device = train_emb.device
    bank = F.normalize(train_emb.float(), dim=1)
    bank_labels = train_labels.to(device)
    num_classes = int(max(bank_labels.max(), test_labels.max())) + 1
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, test_emb.shape[0], chunk_size):
        query = F.normalize(test_emb[start:start + chunk_size].to(device).float(), dim=1)
        sim, idx = (query @ bank.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(query.shape[0], num_classes, device=device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        pred = votes.argmax(dim=1)
        correct += int((pred == test_labels[start:start + chunk_size].to(device)).sum())
    return correct / test_emb.shape[0]


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 256, device=None,
                  num_workers: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Embed every item of ``dataset`` with ``model.embed``, in order.

    ``model`` is any module with ``embed(images (B, C, H, W)) -> (B, D)`` (BYOL, SimCLR,
    HSSL); it runs in eval mode under ``torch.no_grad`` and its train/eval mode is restored
    afterwards. ``dataset`` items are dicts with ``image`` ``(C, H, W)`` (a
    :class:`~medssl_utils.data.SliceDataset` or :class:`~medssl_utils.data.MultiDomainDataset`).
    ``device`` defaults to the model's.

    Returns ``(embeddings (N, D) float32 on CPU, tags)``, ``tags`` mapping each integer
    field of the items (``index``, ``domain``, ``task``, ``group``) to an int64 ``(N,)`` tensor.
    """
    check_int("batch_size", batch_size, 1)
    if not callable(getattr(model, "embed", None)):
        raise ParameterError(f"{type(model).__name__} has no embed(images) method")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    embeddings, tags = [], {}
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            embeddings.append(model.embed(batch["image"].to(device, non_blocking=True)).float().cpu())
            for key, value in batch.items():
                if key != "image" and isinstance(value, torch.Tensor) and value.dim() == 1 \
                        and not value.is_floating_point():
                    tags.setdefault(key, []).append(value.long())
    finally:
        model.train(was_training)
    return torch.cat(embeddings), {key: torch.cat(values) for key, values in tags.items()}


def position_bins(position, bins: int = 3) -> torch.Tensor:
    """Bin relative slice positions in [0, 1] into ``bins`` equal intervals.

    With 3 bins: ``position < 1/3`` -> 0, ``< 2/3`` -> 1, else 2 (one end, middle, other
    end of the stack; for ACDC short-axis stacks slice 0 is usually the base). Returns int64.
    """
    check_int("bins", bins, 1)
    position = np.asarray(position, dtype=np.float64)
    edges = np.arange(1, bins) / bins
    return torch.from_numpy(np.digitize(position, edges).astype(np.int64))


def dataset_labels(dataset: Dataset, by: str, tags: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Probe labels ``(N,)`` for every item of ``dataset``, in order.

    ``by="position"``: :func:`position_bins` of each slice's ``position`` in its cache index
    (a :class:`~medssl_utils.data.SliceDataset` or a
    :class:`~medssl_utils.data.MultiDomainDataset` of them). ``by`` one of ``domain``,
    ``task``, ``group``: the items' integer tags, taken from ``tags`` (as returned by
    :func:`embed_dataset`) or read from the dataset.
    """
    if by not in LABELS:
        raise ParameterError(f"by={by!r} is not allowed; expected one of {list(LABELS)}")
    if by != "position":
        if tags is not None and by in tags:
            return tags[by]
        return torch.tensor([int(dataset[i][by]) for i in range(len(dataset))], dtype=torch.int64)
    parts = getattr(dataset, "parts", [dataset])
    positions = []
    for part in parts:
        cache, rows = getattr(part, "cache", None), getattr(part, "rows", None)
        if cache is None or rows is None or "position" not in cache.index:
            raise ParameterError(f"by='position' needs a SliceDataset (or MultiDomainDataset); "
                                 f"got {type(part).__name__}")
        positions.append(cache.index["position"].to_numpy()[rows])
    return position_bins(np.concatenate(positions))


def knn_probe(model: nn.Module, bank: Dataset, query: Dataset, by: str = "position", k: int = 20,
              temperature: float = 0.07, batch_size: int = 256, device=None) -> float:
    """k-NN accuracy of ``model.embed`` on ``query`` with ``bank`` as the labelled set.

    ``by`` names the labels (see :func:`dataset_labels`). Bank and query should not share
    slices (e.g. the training and validation patients of a split). Returns a float in [0, 1].
    """
    if by not in LABELS:
        raise ParameterError(f"by={by!r} is not allowed; expected one of {list(LABELS)}")
    bank_emb, bank_tags = embed_dataset(model, bank, batch_size=batch_size, device=device)
    query_emb, query_tags = embed_dataset(model, query, batch_size=batch_size, device=device)
    return knn_accuracy(bank_emb, dataset_labels(bank, by, bank_tags), query_emb,
                        dataset_labels(query, by, query_tags), k=k, temperature=temperature)


def chance_levels(bank_labels, query_labels) -> dict[str, float]:
    """``{"chance_majority", "chance_frequency"}`` of a classifier that ignores the images: always the
    bank's most frequent class, or a random class with the bank's frequencies, scored on the query."""
    bank = torch.as_tensor(bank_labels).long()
    query = torch.as_tensor(query_labels).long()
    n = int(max(bank.max(), query.max())) + 1
    p_bank = torch.bincount(bank, minlength=n).double() / len(bank)
    p_query = torch.bincount(query, minlength=n).double() / len(query)
    return {"chance_majority": float(p_query[int(p_bank.argmax())]),
            "chance_frequency": float((p_bank * p_query).sum())}


def knn_evaluate(model: nn.Module, bank: Dataset, query: Dataset, by: str = "position", k: int = 20,
                 temperature: float = 0.07, batch_size: int = 256, device=None) -> dict[str, float]:
    """:func:`knn_probe` with ``model.encoder``'s BatchNorm statistics recomputed on the bank first,
    and the chance levels (:func:`chance_levels`): ``{"acc", "chance_majority", "chance_frequency"}``.

    ``model`` is an SSL method (``embed`` and ``encoder``); the statistics are recomputed through
    ``model.embed`` (so a method that transforms its input, as HSSL's standardisation does, is
    recalibrated on what its encoder sees) and restored afterwards.
    """
    if by not in LABELS:
        raise ParameterError(f"by={by!r} is not allowed; expected one of {list(LABELS)}")
    encoder = getattr(model, "encoder", model)
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    batches = (b["image"].to(device) for b in DataLoader(bank, batch_size=batch_size, shuffle=False))
    with recomputed_bn(encoder, batches, forward=model.embed):
        bank_emb, bank_tags = embed_dataset(model, bank, batch_size=batch_size, device=device)
        query_emb, query_tags = embed_dataset(model, query, batch_size=batch_size, device=device)
    bank_labels, query_labels = dataset_labels(bank, by, bank_tags), dataset_labels(query, by, query_tags)
    acc = knn_accuracy(bank_emb, bank_labels, query_emb, query_labels, k=k, temperature=temperature)
    return {"acc": acc, **chance_levels(bank_labels, query_labels)}
