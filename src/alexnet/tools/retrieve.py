"""Nearest neighbours in fc7 space, for `alexnet retrieve` (the paper's Figure 4, right).

The index holds the last hidden layer's vector (AlexNet.embed: fc7 after its ReLU, eval mode, centre
crop) of every image of one split of a store. It is computed once and kept as two files in a cache
directory: fc7-<key>.npy (float32, N x D, memory-mapped when read, so an index larger than memory works)
and fc7-<key>.json (what it was built from). The key is a hash of the weights, the store split's manifest
entry (count and checksum), the crop and the normalisation: other weights or other data get another index.

The search is exact (every index vector is compared, no approximation), batched on the device: distances
are first computed in the expanded form |q|^2 + |x|^2 - 2 q.x (one matrix product per block of the index),
which ranks candidates fast but loses digits for near-identical vectors, so the best candidates' distances
are then recomputed directly as |q - x|. An image's distance to itself is exactly 0.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet.config import Config
from alexnet.errors import UserError
from alexnet.files import atomic_path, atomic_write, loads_json
from alexnet.model import AlexNet
from alexnet.tools.inference import ModelInfo

INDEX_FORMAT = "alexnet-fc7-index/1"
RERANK_EXTRA = 32  # candidates beyond k whose distances are recomputed exactly


@dataclass
class Index:
    vectors: np.ndarray  # float32 (N, D), memory-mapped
    labels: np.ndarray  # int64 (N,)
    path: Path  # the .npy file
    built: bool  # True when this call computed it, False when it was read from the cache


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, by name: the same weights give the same digest."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def index_key(model: torch.nn.Module, cfg: Config, store: Any, split: str) -> str:
    entry = store.manifest.get("splits", {}).get(split, {})
    identity = {
        "weights": weights_digest(model),
        "split": split,
        "store": {k: entry.get(k) for k in ("count", "checksum", "images_bytes")},
        "size": store.size,
        "crop": cfg.data.crop,
        "normalize": cfg.data.normalize,
    }
    if not entry.get("checksum"):  # no fingerprint of the images: fall back to where they are
        identity["root"] = str(Path(store.root).resolve())
    return hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=10).hexdigest()


@torch.no_grad()
def embed_images(model: AlexNet, images: torch.Tensor, cfg: Config, stats: Any) -> torch.Tensor:
    """fc7 vectors (B, D) of uint8 (B, S, S, 3) images on the model's device: eval mode, centre crop."""
    from alexnet.data.augment import eval_views

    model.eval()
    return model.embed(eval_views(images, cfg.data, stats, ten_crop=False)).float()


def build_or_load_index(model: AlexNet, cfg: Config, info: ModelInfo, store: Any, split: str, cache_dir: Path,
                        device: torch.device, batch_size: int = 128, progress: bool = True) -> Index:
    """The fc7 index of `split`, read from cache_dir when it was built before, else built and saved."""
    from alexnet.data.loader import BatchLoader

    if not store.has_split(split):
        raise UserError(f"the store {store.root} has no '{split}' split: choose --split train or val")
    data = store.split(split)
    key = index_key(model, cfg, store, split)
    npy, meta = cache_dir / f"fc7-{key}.npy", cache_dir / f"fc7-{key}.json"
    if meta.is_file() or npy.is_file():
        cached = _read_cached_index(npy, meta, len(data.labels))
        if cached is not None:
            return Index(cached, np.asarray(data.labels), npy, built=False)
        print(f"alexnet: warning: the cached index {npy} is incomplete or damaged: building it again", file=sys.stderr)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the index folder {cache_dir} ({exc.strerror}): choose --index-cache") \
            from None

    stats = info.stats(cfg, device)
    loader = BatchLoader(data.images, data.labels, batch_size, device)
    n = len(data.labels)
    dim = embed_images(model, torch.from_numpy(np.array(data.images[:1])).to(device), cfg, stats).shape[1]
    # Written to a temporary file and renamed: an interrupted build never leaves a half index behind.
    try:
        with atomic_path(npy) as tmp:
            vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=n, desc="fc7 index", unit="img", dynamic_ncols=True)
            for batch in loader.eval_batches():
                idx = batch.index.cpu().numpy()
                vectors[idx[0]:idx[-1] + 1] = embed_images(model, batch.images, cfg, stats).cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
            if bar is not None:
                bar.close()
            vectors.flush()
            del vectors
    except OSError as exc:
        raise UserError(f"cannot write the index into {cache_dir} ({exc.strerror}): choose --index-cache") from None
    record = {"format": INDEX_FORMAT, "split": split, "count": n, "dim": dim, "store": str(store.root),
              "bytes": npy.stat().st_size, "digest": _sampled_digest(npy),
              "crop": cfg.data.crop, "layer": "last hidden FC layer after its activation (fc7)"}
    atomic_write(meta, json.dumps(record, indent=1))  # written last: its presence marks a finished index
    return Index(np.load(npy, mmap_mode="r"), np.asarray(data.labels), npy, built=True)


def _sampled_digest(path: Path) -> str:
    """The index file's size and 64 blocks spread over it: a truncated, rewritten or swapped index is caught
    without reading all of an ImageNet-sized one (21 GB)."""
    from alexnet.data.store import add_sampled

    digest = hashlib.blake2b(digest_size=16)
    add_sampled(digest, path)
    return digest.hexdigest()


def _read_cached_index(npy: Path, meta: Path, count: int) -> np.ndarray | None:
    """The cached vectors when the cache is whole and matches its record; None when anything is off (missing,
    truncated, changed, another format, values that are not finite), so that the index is built again."""
    try:
        record = loads_json(meta.read_text(encoding="utf-8"))
        if (not isinstance(record, dict) or record.get("format") != INDEX_FORMAT or record.get("count") != count
                or record.get("bytes") != npy.stat().st_size or record.get("digest") != _sampled_digest(npy)):
            return None
        vectors = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape != (count, record.get("dim")):
        return None
    if not np.isfinite(vectors[: min(count, 1024)]).all():
        return None
    return vectors


@torch.no_grad()
def nearest(vectors: np.ndarray, queries: torch.Tensor, k: int, device: torch.device,
            block: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest index rows of each query by Euclidean distance: (distances, indices), (Q, k), nearest
    first, on the CPU. Exact: every row is compared; candidates are re-ranked by direct differences."""
    n = vectors.shape[0]
    k = min(k, n)
    keep = min(n, k + RERANK_EXTRA)
    q = queries.to(device, torch.float32)
    best_d = torch.empty(q.shape[0], 0, device=device)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.int64, device=device)
    for start in range(0, n, block):
        rows = torch.from_numpy(np.array(vectors[start:start + block])).to(device)  # a writable copy of the block
        d = torch.cdist(q, rows, compute_mode="use_mm_for_euclid_dist")  # the expanded form, one matmul
        ids = torch.arange(start, start + rows.shape[0], device=device).expand(q.shape[0], -1)
        best_d, pos = torch.cat([best_d, d], 1).topk(min(keep, best_d.shape[1] + d.shape[1]), dim=1,
                                                     largest=False)
        best_i = torch.cat([best_i, ids], 1).gather(1, pos)
    candidates = torch.from_numpy(np.stack([vectors[i] for i in best_i.cpu().numpy()])).to(device)
    exact = (candidates - q[:, None, :]).norm(dim=2)
    order = exact.argsort(dim=1, stable=True)[:, :k]
    return exact.gather(1, order).cpu(), best_i.gather(1, order).cpu()


def parse_store_query(text: str, count: int) -> int | None:
    """'store:123' -> 123 (an image of the indexed split); None for anything else (an image file)."""
    if not text.startswith("store:"):
        return None
    try:
        i = int(text[len("store:"):])
    except ValueError:
        raise UserError(f"--query {text}: write store:N with N an image number of the indexed split") from None
    if not 0 <= i < count:
        raise UserError(f"--query {text}: the indexed split has images 0 to {count - 1}")
    return i



@dataclass
class Search:
    """The answer to some queries: each query's neighbours (index, distance, class, name), the query images, and
    the index searched."""

    results: list[dict[str, Any]]
    query_images: list[np.ndarray]
    index: Index


def search(model: AlexNet, cfg: Config, info: ModelInfo, store: Any, split_name: str, queries: list[str],
           decoded: dict[str, np.ndarray], k: int, cache_dir: Path, device: torch.device, batch_size: int,
           progress: bool) -> Search:
    """The k nearest images of `split_name` to each query by Euclidean distance of fc7 vectors. A query is
    `store:N` (the stored vector itself: a stored image is at distance exactly 0 from itself) or a file whose
    pixels are in `decoded`. The index is built once per model and split and cached in `cache_dir`."""
    index = build_or_load_index(model, cfg, info, store, split_name, cache_dir, device, batch_size, progress)
    split = store.split(split_name)
    count = len(index.labels)
    query_images, vectors = [], []
    for q in queries:
        i = parse_store_query(q, count)
        if i is not None:
            query_images.append(np.asarray(split.images[i]))
            vectors.append(torch.from_numpy(np.array(index.vectors[i])))
        else:
            query_images.append(decoded[q])
            batch = torch.from_numpy(decoded[q][None]).to(device)
            vectors.append(embed_images(model, batch, cfg, info.stats(cfg, device))[0].cpu())
    distances, neighbours = nearest(index.vectors, torch.stack(vectors), k, device)
    names = store.class_names
    results = [{"query": q, "neighbours": [
        {"index": i, "distance": d, "class": store.classes[int(index.labels[i])], "name": names[int(index.labels[i])]}
        for d, i in zip(d_row, i_row)]} for q, d_row, i_row in zip(queries, distances.tolist(), neighbours.tolist())]
    return Search(results, query_images, index)


def panel_rows(found: Search, store: Any, split_name: str) -> list[Any]:
    """plots.RetrievalRow per query: the query with its caption, its neighbours with their names and distances."""
    from alexnet.plots import RetrievalRow

    split, names, labels = store.split(split_name), store.class_names, found.index.labels
    rows = []
    for image, r in zip(found.query_images, found.results):
        q = r["query"]
        caption = Path(q).name if not q.startswith("store:") else f"{q} {names[int(labels[int(q[6:])])]}"
        rows.append(RetrievalRow(image, caption, [np.asarray(split.images[n["index"]]) for n in r["neighbours"]],
                                 [f"{n['name']}  d={n['distance']:.3g}" for n in r["neighbours"]]))
    return rows
