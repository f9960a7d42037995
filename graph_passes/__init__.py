"""Graph-rewrite passes: make an exported decoder's KV cache TurboQuant rows (one rule per file)."""
from .config import METADATA_KEY, LayerPlan, TQConfig, check_layout_version, load_header, model_config, read_metadata
from .matching import RewriteError
from .pipeline import check_model, detect_source, rewrite_file, rewrite_model, windows_from_hf_config

__all__ = ["METADATA_KEY", "LayerPlan", "RewriteError", "TQConfig", "check_layout_version", "check_model",
           "detect_source", "load_header", "model_config", "read_metadata", "rewrite_file", "rewrite_model",
           "windows_from_hf_config"]
