"""A fixed pool of B cache slots over one loaded decoder, for continuous batching.

Each cache tensor of the model is one host array [B, Hkv, capacity, W] (anonymous memory, so a freed
slot's pages go back to the OS). A slot is one batch row: a sequence is prefilled alone into its
slot, then every decode step feeds one token for each active slot at once. Rows keep their own
lengths: the rewritten attention reads each row's valid length from attention_mask (seqlens_k =
sum - 1) and writes the new row at that position, and position_ids carry each row's position, so
sequences of different lengths share a step and a finished sequence simply leaves its row.

Two cache modes, as DecoderSession picks them:
- shared buffer (rewritten models with shared_buffer_ok): the pool arrays are bound as past and
  present at once (onnxruntime wraps host numpy memory without a copy): a step writes only the new
  rows in place. The prefill binds the slot's own [1, ...] view of the pool.
- concat (original float exports): each step is fed the rows' caches up to the longest row, the
  attention mask marks each row's valid prefix and the new token, and the new rows are copied back
  into the pool at each row's length. (Rewritten edge models, whose attention writes at seqlens
  positions in concat mode, cannot be served this way and are refused.)
"""
from __future__ import annotations

import ctypes
import mmap

import numpy as np
import onnxruntime as ort

from ..session import DecoderSession

_PAGE = mmap.PAGESIZE


def _mincore() -> ctypes._CFuncPtr | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):  # not Linux / no libc symbol
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    fn.restype = ctypes.c_int
    return fn


_MINCORE = _mincore()


def _anon_array(shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, mmap.mmap]:
    nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
    # private: MADV_DONTNEED drops a private anonymous page (it reads as zeros again); Python's default for
    # mmap(-1, n), MAP_SHARED, is shmem, whose pages DONTNEED only unmaps and a later access maps back, data and all
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)  # zero-filled, committed page by page as rows are written
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape), buf


class SlotPool:
    """B slots of `capacity` tokens over `sess` (a loaded DecoderSession; only its InferenceSession,
    cache specs and mode are used). Not thread-safe: one scheduler thread drives it."""

    def __init__(self, sess: DecoderSession, slots: int, capacity: int):
        if sess.target == "edge" or (sess.config and not sess.shared):
            raise ValueError(f"{sess.path}: serving needs a rewritten model with shared-buffer decoding "
                             "(metadata shared_buffer_ok) or an original float export; this model runs in "
                             "concat mode with attention that writes at seqlens positions")
        if slots < 1 or capacity < 2:
            raise ValueError(f"slot pool of {slots} slots x {capacity} tokens: expected at least 1 x 2")
        self.sess, self.slots, self.capacity = sess, int(slots), int(capacity)
        self.shared = bool(sess.shared)
        self.specs = sess.specs
        self.has_positions = "position_ids" in sess.inputs
        self.has_mask = "attention_mask" in sess.inputs
        if not self.has_mask:
            raise ValueError(f"{sess.path}: no attention_mask input; per-row lengths cannot be given")
        self.pool: dict[str, np.ndarray] = {}
        self._buffers: dict[str, mmap.mmap] = {}
        for s in self.specs:
            self.pool[s.past], self._buffers[s.past] = _anon_array(s.shape(self.slots, self.capacity), s.dtype)
        self.lengths = np.zeros(self.slots, dtype=np.int64)  # valid tokens in each slot's cache

    # -- memory -------------------------------------------------------------------------------
    def pool_bytes(self) -> int:
        """Bytes of address space the pool spans (pages are committed only as rows are written)."""
        return sum(a.nbytes for a in self.pool.values())

    def resident_bytes(self) -> int:
        """Bytes of the pool's pages resident in memory now (mincore), -1 where the OS cannot tell."""
        if _MINCORE is None:
            return -1
        total = 0
        for arr in self.pool.values():
            pages = -(-arr.nbytes // _PAGE)
            vec = (ctypes.c_ubyte * pages)()
            if _MINCORE(arr.ctypes.data, arr.nbytes, vec) != 0:
                return -1
            total += int((np.frombuffer(vec, dtype=np.uint8) & 1).sum()) * _PAGE  # bit 0: resident
        return total

    def release(self, slot: int) -> None:
        """Forget a slot's sequence and give its pages back to the OS (they read as zeros again). Pages that
        straddle a neighbouring slot stay; release_all() drops them once every slot is free."""
        self.lengths[slot] = 0
        for name, arr in self.pool.items():
            per = arr.nbytes // self.slots
            start, end = slot * per, (slot + 1) * per
            a, b = -(-start // _PAGE) * _PAGE, (end // _PAGE) * _PAGE  # whole pages inside the slot
            if b > a and hasattr(self._buffers[name], "madvise"):
                self._buffers[name].madvise(mmap.MADV_DONTNEED, a, b - a)

    def release_all(self) -> None:
        """Every slot free: give the whole pool back to the OS (also the pages shared by two slots and the
        dummy rows that free slots compute in a decode step), back to the pool's state at start."""
        self.lengths[:] = 0
        for buf in self._buffers.values():
            if hasattr(buf, "madvise"):
                buf.madvise(mmap.MADV_DONTNEED, 0, len(buf))

    # -- running -------------------------------------------------------------------------------
    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             past: dict[str, np.ndarray], present_in_place: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        io = self.sess.sess.io_binding()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        if self.has_positions:
            io.bind_cpu_input("position_ids", positions)
        for s in self.specs:
            v = ort.OrtValue.ortvalue_from_numpy(past[s.past], "cpu", 0)
            io.bind_ortvalue_input(s.past, v)
            if present_in_place:
                io.bind_ortvalue_output(s.present, v)
            else:
                io.bind_output(s.present, "cpu")
        io.bind_output("logits", "cpu")
        self.sess.sess.run_with_iobinding(io)
        outs = io.get_outputs()  # binding order: present.* then logits
        presents = {} if present_in_place else {s.past: outs[i].numpy() for i, s in enumerate(self.specs)}
        return outs[-1].numpy()[:, -1, :], presents

    def prefill(self, slot: int, prompt_ids: list[int]) -> np.ndarray:
        """Feed a whole prompt into an empty slot; returns its last logits [vocab]."""
        S = len(prompt_ids)
        if not 1 <= S <= self.capacity:
            raise ValueError(f"prompt of {S} tokens: the slots hold 1 to {self.capacity}")
        ids = np.asarray([prompt_ids], dtype=np.int64)
        mask, pos = np.ones((1, S), dtype=np.int64), np.arange(S, dtype=np.int64)[None]
        if self.shared:
            logits, _ = self._run(ids, mask, pos, {n: a[slot:slot + 1] for n, a in self.pool.items()}, True)
        else:
            past = {s.past: np.zeros(s.shape(1, 0), s.dtype) for s in self.specs}
            logits, pres = self._run(ids, mask, pos, past, False)
            for s in self.specs:
                self.pool[s.past][slot, :, :S] = pres[s.past][0]
        self.lengths[slot] = S
        return logits[0]

    def decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """One step: token `tokens[slot]` appended to each listed slot; returns each slot's logits.
        Rows of slots not listed (free) run on a dummy token and are not read."""
        if not tokens:
            return {}
        hi = max(tokens) + 1  # the batch is the pool's first `hi` rows
        L = self.lengths[:hi].copy()
        for slot in tokens:
            if L[slot] + 1 > self.capacity:
                raise ValueError(f"slot {slot}: {L[slot]} + 1 tokens exceed the capacity {self.capacity}")
        ids = np.zeros((hi, 1), dtype=np.int64)
        for slot, t in tokens.items():
            ids[slot, 0] = t
        active = np.zeros(hi, dtype=bool)
        active[list(tokens)] = True
        L_eff = np.where(active, L, 0)  # a free row computes as a 1-token sequence at position 0
        if self.shared:
            T = int(L_eff.max()) + 1
            mask = (np.arange(T)[None, :] <= L_eff[:, None]).astype(np.int64)
            logits, _ = self._run(ids, mask, L_eff[:, None], {n: a[:hi] for n, a in self.pool.items()}, True)
        else:
            P = int(L_eff.max())
            mask = np.concatenate([(np.arange(P)[None, :] < L_eff[:, None]), np.ones((hi, 1), bool)], 1)
            past = {n: np.ascontiguousarray(a[:hi, :, :P]) for n, a in self.pool.items()}
            logits, pres = self._run(ids, mask.astype(np.int64), L_eff[:, None], past, False)
            for s in self.specs:
                for slot in tokens:
                    self.pool[s.past][slot, :, L[slot]] = pres[s.past][slot, :, P]
        for slot in tokens:
            self.lengths[slot] += 1
        return {slot: logits[slot] for slot in tokens}
