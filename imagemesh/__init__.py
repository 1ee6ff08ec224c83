"""ImageMesh: generate and enhance images through one gRPC gateway, under mesh-wide key limits.

The shared package: the client (`Client`, `generate`, `enhance`), generated protocol stubs
(`imagemesh.v1`), and what the gateway and workers share (config, leases, metrics, errors).
"""

from imagemesh.client import Client, enhance, generate

__all__ = ["Client", "enhance", "generate"]
