"""Quality of a compressed KV cache on real models and text, measured through ONNX Runtime.

Everything here runs the exported ONNX graphs: the *original* model (the unrewritten optimum
export, float32 cache) and a *variant* (the same export rewritten by the TurboQuant passes, so its
cache holds TurboQuant rows and attention runs in the custom op, or rewritten by
`graph_passes.rule_uniform_baseline`, a per-token int-b cache). Nothing is simulated in Python.

Metrics (all on the same token positions for both models):

- **Perplexity**, sliding over the cache the way decoding does: the text is cut into windows of
  `context` tokens; each window starts with a fresh cache (plus the model's BOS token if its
  tokenizer adds one) and is fed `chunk` tokens at a time through one session whose cache grows,
  so the tokens of a step attend to their own K/V exactly and to every earlier token of the window
  through the (compressed) cache. `chunk=1` is true token-by-token decoding (the default); a
  larger chunk is faster but optimistic (tokens inside a chunk see each other uncompressed).
  Windows are decoded `batch` at a time as the rows of one batch (the cost of a decode step on a
  CPU is mostly reading the weights, so this is nearly free). The first token of each window is
  context only; the other `context - 1` are scored.
- **KL divergence** KL(original || variant) of the next-token distributions (nats), averaged over
  the same positions.
- **Top-1 agreement** on those positions (same argmax).
- **Greedy generation**: the original model continues `gen_prompts` real prompts (text snippets
  that follow the perplexity region) greedily for `gen_tokens` tokens (prompt prefilled in one run,
  then one token per step, EOS not special). The variant is fed the original's tokens (teacher
  forcing): *agreement* is the fraction of the positions where its greedy token equals the
  original's; *first divergence* is the first position where it differs (`gen_tokens` if never).
  The first divergence of teacher forcing is exactly where the variant's own free-running greedy
  generation would first leave the original's (until then both have been fed the same tokens).

The original model's log-probabilities are computed once per (model, tokens, context) with each
window prefilled in one run (its logits do not depend on the chunking beyond float rounding:
`chunking_check` in the results measures that on the first window) and kept in a float32 memmap
under `<cache>/eval/`, so sweeps over many variants pay for the original once.

Modules: `data` (texts -> token windows and prompts), `metrics` (log-softmax, KL, per-text NLL),
`report` (environment, command line, markdown and results files), `plots`, `runners` (the
variants, the original model's reference, evaluate_variant and run_eval), `sensitivity` (per-layer
cost of each width, `tq-ort calibrate`) and `allocation` (per-layer widths for a bits budget). None imports this
package's __init__; the names below are the public interface.
"""
from __future__ import annotations

from .data import DEFAULT_TEXTS, MODEL_ALIASES, EvalData, EvalSettings, build_data, load_tokenizer, resolve_model_dir
from .plots import plot
from .report import command_line, environment, markdown_report, markdown_table, model_info, table_rows, write_results
from .runners import Reference, Variant, build_variant, bytes_of, evaluate_variant, parse_variant, run_eval

__all__ = ["DEFAULT_TEXTS", "MODEL_ALIASES", "EvalData", "EvalSettings", "Reference", "Variant", "build_data",
           "build_variant", "bytes_of", "command_line", "environment", "evaluate_variant", "load_tokenizer",
           "markdown_report", "markdown_table", "model_info", "parse_variant", "plot", "resolve_model_dir",
           "run_eval", "table_rows", "write_results"]
