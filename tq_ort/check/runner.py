"""The one runner polygraphy lacks: a decoder whose KV cache stays inside the session between steps.

Polygraphy's runners are stateless (one feed dict in, the outputs out). `DecoderStepRunner` wraps a
tq-ort generation session (tq_ort.session.DecoderSession on ORT CPU / CUDA, or
tq_ort.trt.session.TrtDecoderSession): each feed dict {"input_ids": [1, S]} is one step, its output
{"logits": [1, vocab]} the logits of the step's last token; activate() starts a new sequence.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType


class DecoderStepRunner(BaseRunner):
    def __init__(self, make_session: Callable[[], object], name: str):
        """make_session: returns an object with reset(batch) and step(ids [B, S]) -> logits [B, vocab]."""
        super().__init__(name=name, prefix="tq-decoder")
        self._make = make_session
        self.sess = None

    def activate_impl(self) -> None:
        self.sess = self._make()
        self.sess.reset(1)

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add("input_ids", dtype=DataType.INT64, shape=[1, "sequence"])

    def infer_impl(self, feed_dict: dict) -> OrderedDict:
        start = time.time()
        logits = self.sess.step(np.asarray(feed_dict["input_ids"], dtype=np.int64))
        self.inference_time = time.time() - start
        return OrderedDict(logits=np.asarray(logits, dtype=np.float32))

    def deactivate_impl(self) -> None:
        self.sess = None
