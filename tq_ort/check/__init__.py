"""`tq-ort check`: polygraphy-based parity of a rewritten model (checker), its stateful runner
(runner), the thresholds derived from the bit widths (tolerances) and the `polygraphy run --tq-onnxrt`
extension (polygraphy_ext). Needs polygraphy (the [check] or [tensorrt] extra), imported by those
modules only."""
