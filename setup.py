"""Which packages the wheel holds and where each comes from; pyproject.toml holds the rest.

- `imagemesh` and every subpackage of it, found (a new subpackage needs no edit here).
- The deployables `gateway`, `gen_worker`, `enhance_worker` (and their subpackages) under
  `imagemesh/_deployables/`, never as top-level packages: a wheel that installed a top-level
  `gateway` would collide with any service's own `gateway` module. `imagemesh.deployables`
  (the `imagemesh-gateway`, ... entry points) puts that directory on sys.path of its own
  process only.
- Data inside the package: the .proto files (`imagemesh/protos/imagemesh/v1/*.proto`, laid out
  for `protoc -I .../imagemesh/protos`) and the demo's tasks (`imagemesh/examples/tasks.json`).
"""

from setuptools import find_packages, setup

DEPLOYABLES = ("gateway", "gen_worker", "enhance_worker")
DATA = {"imagemesh.protos.imagemesh.v1": "protos/imagemesh/v1", "imagemesh.examples": "examples"}

packages = find_packages(include=["imagemesh", "imagemesh.*"])
package_dir = dict(DATA)
for name in find_packages(include=[f"{top}{tail}" for top in DEPLOYABLES for tail in ("", ".*")]):
    shipped = f"imagemesh._deployables.{name}"
    packages.append(shipped)
    package_dir[shipped] = name.replace(".", "/")

setup(packages=[*packages, *DATA], package_dir=package_dir)
