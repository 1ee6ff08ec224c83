from tests.mesh.conftest import mesh_factory  # noqa: F401  (the same process fixtures)
