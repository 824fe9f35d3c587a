"""MiniCPM-o 2.6 as a profiling workload: shape-faithful modules and serving-shaped requests."""

from .dims import ModelDims, model_dims
from .errors import WorkloadError
from .model import COMPONENTS, MiniCPMO, build_model, describe
from .requests import WORKLOADS, RequestOptions, Step, build_requests
from .weights import load_weights

__all__ = [
    "COMPONENTS", "WORKLOADS", "MiniCPMO", "ModelDims", "RequestOptions", "Step", "WorkloadError",
    "build_model", "build_requests", "describe", "load_weights", "model_dims",
]
