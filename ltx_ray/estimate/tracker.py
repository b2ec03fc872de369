"""Live tensor memory of a computation, storage by storage, the same on fake and on real tensors.

`StorageTracker` is a `TorchDispatchMode`: every tensor an operator returns is
counted once per storage (views share their base's), in the kind it was made
under (`phase`), and dropped when the storage is released (`weakref.finalize`
on the storage, which torch keeps as one Python object per storage). Under
`FakeTensorMode` no memory is allocated, yet every storage has its real size,
so the same tracker gives the peak of a step on a model that would not fit
this machine. Tensors made before the tracker starts (parameters, inputs) are
counted by `add`.

torch's own `MemTracker` would be the obvious tool, but it hooks every
parameter's gradient and refuses a model with frozen parameters (a LoRA's base).
"""

from __future__ import annotations

import weakref
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class StorageTracker(TorchDispatchMode):
    """Bytes of live storages by kind, the peak of their sum, and the kinds at that peak."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "setup"
        self.live: dict[str, int] = defaultdict(int)
        self.current = 0
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.peak_phase = "setup"
        self._storages: dict[int, list] = {}  # id(storage) -> [bytes, kind]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out

    def add(self, tensor: torch.Tensor, kind: str | None = None) -> None:
        """Count `tensor`'s storage under `kind` (default: the current phase) unless it is counted already."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._storages:
            return
        size = storage.nbytes()
        kind = kind or self.phase
        self._storages[key] = [size, kind]
        weakref.finalize(storage, self._release, key)
        self.live[kind] += size
        self.current += size
        if self.current > self.peak:
            self.peak = self.current
            self.at_peak = dict(self.live)
            self.peak_phase = self.phase

    def retag(self, tensor: torch.Tensor, kind: str) -> None:
        """Count `tensor`'s storage as `kind` from now on (e.g. a gradient once it sits in `.grad`)."""
        entry = self._storages.get(id(tensor.untyped_storage()))
        if entry is None:
            self.add(tensor, kind)
            return
        size, old = entry
        self.live[old] -= size
        self.live[kind] += size
        entry[1] = kind

    def reset_peak(self) -> None:
        self.peak = self.current
        self.at_peak = dict(self.live)
        self.peak_phase = self.phase

    def _release(self, key: int) -> None:
        entry = self._storages.pop(key, None)
        if entry is not None:
            size, kind = entry
            self.live[kind] -= size
            self.current -= size
