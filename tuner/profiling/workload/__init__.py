"""MiniCPM-o 2.6 as a profiling workload: shape-faithful modules and serving-shaped requests."""

from .dims import ModelDims, model_dims
from .errors import WorkloadError
from .model import COMPONENTS, MiniCPMO, build_model, describe
from .requests import WORKLOADS, RequestOptions, Step, build_requests, components_for, resolve_workloads
from .weights import load_weights

__all__ = [
    "COMPONENTS", "WORKLOADS", "MiniCPMO", "ModelDims", "RequestOptions", "Step", "WorkloadError",
    "build_model", "build_requests", "components_for", "describe", "load_weights", "model_dims",
    "resolve_workloads",
]
