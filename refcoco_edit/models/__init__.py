"""The model layer: where a model comes from, whether it is the right kind, how it is loaded
safely and put on a device, shared by the ground-truth pipelines (``refcoco_edit.pipelines``)
and the benchmark (``refcoco_edit.benchmark``).

==================  ============================================================================
module              what
==================  ============================================================================
``source``          ``ModelError`` / ``ModelUnavailable``; local path or hub id (``resolve_source``,
                    ``hub_file``, ``local_files_only``); kind checks from JSON configs alone
                    (``validate_kind``, ``check_model``, ``read_model_config``); model folders and
                    weight files (``resolve_model_dir``, ``resolve_weights_file``)
``runtime``         ``DTYPES``, ``resolve_device``, ``resolve_dtype``, ``Runtime``, ``dtype_kwargs``
``weights``         ``load_state_dict`` (safetensors or ``weights_only`` torch pickles),
                    ``model_details`` / ``weights_sha256`` for results.json
``diffusion``       ``load_diffusers`` (checked, cached, ``optimize``-d), the Paint-by-Example alias
``vision``          image inputs of vision backbones (processor on the model's device)
``clip``            ``ClipEncoder``: the one CLIP wrapper of the filters and the metrics
==================  ============================================================================

Layering: this package is core. It imports nothing from ``refcoco_edit.pipelines``,
``.benchmark``, ``.annotation``, ``.cli`` or ``.build``, and no torch, diffusers or transformers
at module import time (``refcoco-edit --help`` stays torch-free).
"""
from __future__ import annotations

from refcoco_edit.models.clip import ClipEncoder
from refcoco_edit.models.diffusion import clear_cache, install_pbe_alias, load_diffusers, optimize
from refcoco_edit.models.runtime import DTYPES, Runtime, dtype_kwargs, resolve_device, resolve_dtype
from refcoco_edit.models.source import (
    KINDS,
    ModelError,
    ModelSource,
    ModelUnavailable,
    check_model,
    hub_file,
    looks_like_path,
    read_json,
    read_model_config,
    resolve_model_dir,
    resolve_source,
    resolve_weights_file,
    validate_kind,
)
from refcoco_edit.models.vision import pixel_values, processor_input_size, writable
from refcoco_edit.models.weights import load_state_dict, model_details, revision_of, weights_sha256

__all__ = [
    "ModelError", "ModelUnavailable", "ModelSource", "KINDS", "looks_like_path", "hub_file", "resolve_source",
    "read_json", "validate_kind", "check_model", "resolve_model_dir", "read_model_config", "resolve_weights_file",
    "DTYPES", "resolve_device", "resolve_dtype", "Runtime", "dtype_kwargs",
    "load_state_dict", "model_details", "revision_of", "weights_sha256",
    "install_pbe_alias", "load_diffusers", "optimize", "clear_cache",
    "writable", "pixel_values", "processor_input_size", "ClipEncoder",
]
