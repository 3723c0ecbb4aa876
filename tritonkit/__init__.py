"""tritonkit: model spec + GPU -> explained plan -> Triton model repository -> served, measured."""

__version__ = "0.1.0"
