"""halo_ray: hyperbolic active learning (HALO) for domain-adaptive segmentation, run at scale with Ray."""

__version__ = "0.1.0"
