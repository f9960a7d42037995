"""`tq-ort check`: per-step logits parity of a rewritten model, with polygraphy's Comparator.

Runners (tq_ort.check.runner.DecoderStepRunner, the cache kept between steps) see the same fixed token
sequence, teacher-forced: step 0 feeds the first `prefill` tokens, steps 1..N one token each.
Comparisons: (a) the original float export vs the rewritten model, both on ORT CPU; (b) the rewritten
model on ORT CPU vs the CUDA EP, where onnxruntime has it; (c) ORT CPU vs a TensorRT engine, when one
is given. Each is checked with polygraphy's SnrCompareFunc per step (and, for (a), with check_average
over the decode steps) against the thresholds of tq_ort.check.tolerances; greedy-token agreement is
counted on the side.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import tolerances as tol

DEFAULT_TEXT = ("The history of the city begins with a small settlement on the river, where traders met to "
                "exchange salt, grain and cloth. Over the centuries it grew into a busy port, and its bridges, "
                "markets and libraries drew visitors from every part of the country.")


@dataclass
class CheckOptions:
    steps: int = 32  # decode steps after the prefill step
    prefill: int = 4  # tokens of step 0
    text: str | None = None  # None: DEFAULT_TEXT through the model folder's tokenizer
    original: Path | None = None  # None: the record beside the model (tq_ort.export.recorded_original)
    engine: Path | None = None
    cuda: bool | None = None  # None: where onnxruntime has the CUDA EP
    skip_float: bool = False  # no comparison (a)
    mean_margin_db: float = tol.MEAN_MARGIN_DB
    step_margin_db: float = tol.STEP_MARGIN_DB
    save_results: Path | None = None
    verbose: bool = True  # polygraphy's per-step lines

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps}: expected >= 1")
        if self.prefill < 1:
            raise ValueError(f"prefill={self.prefill}: expected >= 1 token")


@dataclass
class PairResult:
    name: str
    reference: str
    candidate: str
    tolerance: tol.Tolerance
    step_snr: list[float]
    mean_snr: float | None
    agree: int
    counted: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class CheckReport:
    model: Path
    tokens: str
    pairs: list[PairResult]
    skipped: list[str]

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.pairs)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def summary(self) -> str:
        lines = [f"tq-ort check {self.model}: {len(self.pairs)} comparison(s), inputs: {self.tokens}"]
        for p in self.pairs:
            snr = [s for s in p.step_snr if math.isfinite(s)]
            lines.append(f"  {'PASS' if p.passed else 'FAIL'} {p.name}: {p.reference} vs {p.candidate}")
            lines.append(f"       logits SNR per step: min {min(snr, default=math.inf):.1f} dB"
                         + (f", mean over decode steps {p.mean_snr:.1f} dB" if p.mean_snr is not None else "")
                         + f"; greedy tokens agree at {p.agree}/{p.counted} steps")
            lines.append(f"       tolerance: {p.tolerance.why}")
            lines += [f"       {f}" for f in p.failures]
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def rewritten_model(model: str | Path) -> tuple[Path, dict]:
    """(model.onnx, its turboquant config); ValueError when the model was not rewritten by tq-ort."""
    from graph_passes import load_header, read_metadata

    from ..trt.build import resolve_model

    path = resolve_model(model)
    try:
        config = read_metadata(load_header(path), str(path))
    except ValueError as e:
        raise ValueError(f"{e}; tq-ort check compares a rewritten model (tq-ort export / rewrite)") from None
    return path, config


def original_model(rewritten: Path, given: Path | None) -> Path:
    from ..export import recorded_original
    from ..trt.build import resolve_model

    if given is not None:
        return resolve_model(given)
    rec = recorded_original(rewritten)
    if rec is None:
        raise ValueError(f"{rewritten}: no original float model recorded beside it (model.onnx.original.json, written "
                         "by tq-ort export / rewrite); pass --original PATH, or --skip-float")
    if not rec.is_file():
        raise FileNotFoundError(f"{rec}: the recorded original float model is gone (cache cleared?); re-export, "
                                "or pass --original PATH")
    return rec


def token_ids(model_dir: Path, n: int, text: str | None) -> tuple[list[int], str]:
    """n token ids: `text` (default DEFAULT_TEXT, repeated as needed) through the folder's tokenizer, or,
    without a tokenizer, deterministic ids (seed 0) below min(vocab_size, 256)."""
    given = text is not None
    text = text or DEFAULT_TEXT
    try:
        from ..quality.data import load_tokenizer

        tok = load_tokenizer(model_dir)
    except Exception as e:  # no transformers, or no tokenizer files in the folder
        if given:
            raise ValueError(f"--text given but {model_dir} has no loadable tokenizer ({type(e).__name__}: {e})") from None
        cfg = model_dir / "config.json"
        vocab = json.loads(cfg.read_text()).get("vocab_size", 256) if cfg.exists() else 256
        ids = np.random.default_rng(0).integers(0, min(int(vocab), 256), n)
        return [int(i) for i in ids], f"{n} deterministic token ids (seed 0; no tokenizer in {model_dir})"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"text {text!r}: the tokenizer gives no tokens")
    ids = (ids * (n // len(ids) + 1))[:n]
    return ids, f"{n} tokens of {'the given text' if given else 'the default text'} ({type(tok).__name__})"


def _ort_session(path: Path, device: str, max_length: int):
    from ..session import DecoderSession

    return DecoderSession(path, device=device, max_length=max_length)


def _engine_session(path: Path, max_length: int):
    from ..trt.session import TrtDecoderSession

    return TrtDecoderSession(path, max_length=max_length)


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.mean((ref.astype(np.float64) - got) ** 2))
    return math.inf if noise == 0 else 10.0 * math.log10(float(np.mean(ref.astype(np.float64) ** 2)) / noise)


def _compare_pair(results, i: int, j: int, name: str, t: tol.Tolerance, prefill: int) -> PairResult:
    from polygraphy.comparator import Comparator, RunResults, SnrCompareFunc

    ra, rb = results[i], results[j]
    runner_a, iters_a = ra
    runner_b, iters_b = rb
    # polygraphy's report: every step against the step threshold ...
    step_acc = Comparator.compare_accuracy(results, comparisons=[(i, j)],
                                           compare_func=SnrCompareFunc(snr_threshold=t.step_snr_db))
    per_step = step_acc[0][(runner_a, runner_b)]
    out = PairResult(name, runner_a, runner_b, t, [], None, 0, 0)
    for k, (outputs, a, b) in enumerate(zip(per_step, iters_a, iters_b)):
        ref, got = np.asarray(a["logits"], np.float64), np.asarray(b["logits"], np.float64)
        snr = outputs["logits"].snr
        out.step_snr.append(float(snr))
        diff = np.abs(ref - got)
        if not bool(outputs["logits"]):
            where = f"prefill of {prefill} tokens" if k == 0 else f"decode, position {prefill + k - 1}"
            out.failures.append(f"step {k} ({where}), output 'logits' {tuple(ref.shape)}: SNR {snr:.2f} dB < "
                                f"{t.step_snr_db:.2f} dB; |diff| mean {diff.mean():.4g}, max {diff.max():.4g}, "
                                f"reference rms {np.sqrt((ref ** 2).mean()):.4g}")
        # greedy agreement (teacher-forced: the token each runner would pick at this step)
        top = np.sort(ref[0])[-2:]
        rms = float(np.sqrt((diff ** 2).mean()))
        if t.tie_factor is None or top[1] - top[0] >= t.tie_factor * rms:
            out.counted += 1
            same = int(ref[0].argmax() == got[0].argmax())
            out.agree += same
            if not same and t.tie_factor is not None:
                out.failures.append(f"step {k}: greedy token {int(ref[0].argmax())} ({runner_a}) != "
                                    f"{int(got[0].argmax())} ({runner_b}) with a top-2 gap of {top[1] - top[0]:.4g} "
                                    f"(> {t.tie_factor:g} x rms difference {rms:.3g})")
    if t.mean_snr_db is not None and len(iters_a) > 1:
        # ... and the mean over the decode steps (the prefill step attends exactly) with check_average
        decode = RunResults()
        decode.append((runner_a, iters_a[1:]))
        decode.append((runner_b, iters_b[1:]))
        mean_acc = Comparator.compare_accuracy(decode, comparisons=[(0, 1)], check_average=True,
                                               compare_func=SnrCompareFunc(snr_threshold=t.mean_snr_db))
        out.mean_snr = float(np.mean(out.step_snr[1:]))
        if not bool(mean_acc):
            out.failures.append(f"mean logits SNR over decode steps 1..{len(iters_a) - 1}: {out.mean_snr:.2f} dB < "
                                f"{t.mean_snr_db:.2f} dB")
    return out


def run_check(model: str | Path, o: CheckOptions | None = None) -> CheckReport:
    """Run the comparisons; returns the report (exit_code 0 = all pass, 1 = a mismatch). Usage errors
    (missing folder, not a rewritten model, no original) raise ValueError / FileNotFoundError."""
    o = o or CheckOptions()
    o.validate()
    path, config = rewritten_model(model)
    original = None if o.skip_float else original_model(path, o.original)
    if o.engine is not None and not Path(o.engine).is_file():
        raise FileNotFoundError(f"--engine {o.engine}: no such engine")
    import onnxruntime as ort
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # (else polygraphy asks for the `colored` package)
    G_LOGGER.module_severity = G_LOGGER.INFO if o.verbose else G_LOGGER.WARNING
    n = o.prefill + o.steps
    ids, where = token_ids(path.parent, n, o.text)
    feeds = [{"input_ids": np.asarray([ids[:o.prefill]], np.int64)}] + [
        {"input_ids": np.asarray([[t]], np.int64)} for t in ids[o.prefill:]]
    sessions, skipped = {}, []
    if original is not None:
        sessions["float-ort-cpu"] = _ort_session(original, "cpu", n)
    sessions["tq-ort-cpu"] = _ort_session(path, "cpu", n)
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if o.cuda and not has_cuda:
        raise ValueError(f"--cuda: this onnxruntime has no CUDAExecutionProvider (available: {ort.get_available_providers()})")
    if has_cuda and o.cuda is not False:
        sessions["tq-ort-cuda"] = _ort_session(path, "cuda", n)
    else:
        skipped.append("ORT CPU vs CUDA EP: " + ("--no-cuda" if has_cuda else "this onnxruntime has no CUDAExecutionProvider"))
    if o.engine is not None:
        sessions["tq-trt"] = _engine_session(Path(o.engine), n)
    else:
        skipped.append("ORT vs TensorRT: no --engine")
    if original is None:
        skipped.append("float vs rewritten: --skip-float")
    from .runner import DecoderStepRunner

    runners = [DecoderStepRunner(lambda s=s: s, name) for name, s in sessions.items()]
    results = Comparator.run(runners, data_loader=feeds)
    if o.save_results:
        results.save(str(o.save_results))
    names = list(sessions)
    dtype = "float16" if sessions["tq-ort-cpu"].float_dtype == np.float16 else "float32"
    pairs = []
    if "float-ort-cpu" in sessions:
        pairs.append(_compare_pair(results, 0, names.index("tq-ort-cpu"), "(a) float export vs rewritten, ORT CPU",
                                   tol.float_vs_rewritten(config, o.mean_margin_db, o.step_margin_db), o.prefill))
    ref = names.index("tq-ort-cpu")
    if "tq-ort-cuda" in sessions:
        pairs.append(_compare_pair(results, ref, names.index("tq-ort-cuda"), "(b) rewritten, ORT CPU vs CUDA EP",
                                   tol.same_model(dtype), o.prefill))
    if "tq-trt" in sessions:
        fp16 = sessions["tq-trt"].sidecar["options"].get("fp16")
        pairs.append(_compare_pair(results, ref, names.index("tq-trt"), "(c) rewritten, ORT CPU vs TensorRT engine",
                                   tol.same_model("float16" if fp16 else dtype), o.prefill))
    return CheckReport(path, where, pairs, skipped)
