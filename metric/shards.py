"""Several FAISS index files searched as one: the layout of a catalogue larger than one machine.

A shard is an ordinary FAISS index file (any kind ``metric index`` builds) holding a contiguous block of the
catalogue, optionally with its exact vectors as a ``.npy`` in the same order (for ivfpq re-ranking). Shard ``i``'s
local id ``j`` is global id ``offset_i + j``, ``offset_i`` being the sizes of the shards before it.

* One process: ``open_shards`` puts the memory-mapped shards behind a ``faiss.IndexShards`` (each shard searched
  on its own thread, ids offset by FAISS), re-ranked from the shards' vector files read as one.
* Several processes (or machines): ``ShardProcesses`` starts one worker per shard; each loads only its shard,
  answers a query batch with its own top-k (re-ranked by exact inner product when it has vectors) and the
  coordinator merges them with ``merge_topk``. The merge is exact: every score is the same inner product whichever
  shard computed it, so the k best of the shards' k best are the k best of their union. Whatever differs from one
  index over all vectors comes from each shard's approximate search, not from splitting. Across machines the
  workers are the same loop behind a network call (scatter the batch, gather k rows per shard, merge), so the
  coordinator's memory is queries x k x shards, independent of the catalogue.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from fashionkit.errors import UserError
from fashionkit.metric.index import DEFAULT_RERANK, Reranked, read_index_mmap, set_search_params


def merge_topk(sims: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest similarities of each row over several shards' answers (``[nq, k_i]`` each, global ids,
    -1 / -inf where a shard had fewer); ties keep the earlier shard first."""
    all_sims, all_ids = np.concatenate(sims, axis=1), np.concatenate(ids, axis=1)
    all_sims = np.where(all_ids >= 0, all_sims, -np.inf)
    order = np.argsort(-all_sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_sims, order, 1), np.take_along_axis(all_ids, order, 1)


class ConcatVectors:
    """Several shards' vector files read as one array by global id (only row gathers, as re-ranking needs)."""

    def __init__(self, parts: list):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), parts[0].shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for i, vectors in enumerate(self.parts):
            mine = part == i
            if mine.any():
                out[mine] = vectors[rows[mine] - self.starts[i]]
        return out


def _check(index_paths: list, vector_paths: list | None) -> None:
    if not index_paths:
        raise UserError("no shard index files given")
    for path in index_paths + list(vector_paths or []):
        if not Path(path).is_file():
            raise UserError(f"shard file not found: {path}")
    if vector_paths is not None and len(vector_paths) != len(index_paths):
        raise UserError(f"{len(index_paths)} shard indexes but {len(vector_paths)} vector files; give one per shard")


def load_shard(index_path, vectors_path=None, rerank: int = DEFAULT_RERANK, nprobe: int | None = None,
               ef_search: int | None = None, vector_range: tuple[int, int] | None = None):
    """One shard, memory-mapped, searchable as ``search(queries, k) -> (similarities, local ids)``;
    ``vector_range``: its rows of a vector file shared by several shards (a view of the mapping, not a copy)."""
    index = read_index_mmap(index_path)
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    if vectors_path is not None and rerank:
        vectors = np.load(vectors_path, mmap_mode="r")
        return Reranked(index, vectors[slice(*vector_range)] if vector_range else vectors, rerank)
    return index


def open_shards(index_paths: list, vector_paths: list | None = None, rerank: int = DEFAULT_RERANK,
                nprobe: int | None = None, ef_search: int | None = None):
    """The shards as one searchable index in this process: a ``faiss.IndexShards`` over the memory-mapped files
    (searched in parallel, ids offset by the shard sizes), re-ranked from their vector files when given."""
    import faiss

    _check(index_paths, vector_paths)
    shards = [read_index_mmap(p) for p in index_paths]
    dims = {s.d for s in shards}
    if len(dims) != 1:
        raise UserError(f"the shards hold vectors of different sizes ({sorted(dims)}); they are not one catalogue")
    joined = faiss.IndexShards(shards[0].d, True, True)  # threaded, successive ids
    for shard in shards:
        set_search_params(shard, nprobe=nprobe, ef_search=ef_search)
        joined.add_shard(shard)
    joined = JoinedShards(joined, shards)
    if vector_paths is None or not rerank:
        return joined
    return Reranked(joined, ConcatVectors([np.load(p, mmap_mode="r") for p in vector_paths]), rerank)


class JoinedShards:
    """A ``faiss.IndexShards`` with its shards: it does not own them, so they must live as long as it does."""

    def __init__(self, joined, shards: list):
        self.joined, self.shards = joined, shards

    @property
    def ntotal(self) -> int:
        return int(self.joined.ntotal)

    @property
    def d(self) -> int:
        return int(self.joined.d)

    def search(self, queries: np.ndarray, k: int):
        return self.joined.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _serve(conn, index_path, vectors_path, rerank, nprobe, ef_search, threads, vector_range) -> None:
    """A shard worker: load one shard, then answer ``(queries, k)`` with its top-k (local ids) until ``None``."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    try:
        searcher = load_shard(index_path, vectors_path, rerank, nprobe, ef_search, vector_range)
    except Exception as e:  # the coordinator reports it; a worker has no terminal of its own
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", int(searcher.ntotal)))
    while (msg := conn.recv()) is not None:
        queries, k = msg
        conn.send(searcher.search(queries, min(k, searcher.ntotal)))


class ShardProcesses:
    """One worker process per shard; ``search`` scatters a query batch to all of them and merges their top-k.
    The stand-in, on one machine, for one shard per machine. Use as a context manager (the workers stop)."""

    def __init__(self, index_paths: list, vector_paths: list | None = None, rerank: int = DEFAULT_RERANK,
                 nprobe: int | None = None, ef_search: int | None = None, threads: int = 1,
                 vector_ranges: list[tuple[int, int]] | None = None):
        _check(index_paths, vector_paths)
        ctx = mp.get_context("spawn")  # forking a process whose OpenMP threads already ran can deadlock
        self.conns, self.procs = [], []
        for i, path in enumerate(index_paths):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, daemon=True,
                               args=(child, str(path), str(vector_paths[i]) if vector_paths else None, rerank,
                                     nprobe, ef_search, threads, vector_ranges[i] if vector_ranges else None))
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        sizes = []
        for path, conn in zip(index_paths, self.conns):
            status, value = conn.recv()
            if status != "ready":
                self.close()
                raise UserError(f"shard {path} could not be opened: {value}")
            sizes.append(value)
        self.offsets = np.cumsum([0] + sizes)[:-1]
        self.ntotal = int(sum(sizes))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        for conn in self.conns:
            conn.send((queries, k))
        sims, ids = [], []
        for offset, conn in zip(self.offsets, self.conns):
            s, i = conn.recv()
            sims.append(s)
            ids.append(np.where(i >= 0, i + offset, -1))
        return merge_topk(sims, ids, k)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
