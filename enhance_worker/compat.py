"""Make basicsr 1.4.2 importable beside torchvision >= 0.17.

basicsr (imported by gfpgan and realesrgan) does
`from torchvision.transforms.functional_tensor import rgb_to_grayscale`; torchvision removed
that private module in 0.17 and moved the function to `torchvision.transforms.functional`.
basicsr's last release predates the move, so without this alias `import gfpgan` fails with
`No module named 'torchvision.transforms.functional_tensor'`.

`install()` must run before the first basicsr import; importing `enhance_worker.models` does
it. It is idempotent and leaves an existing module alone (an older torchvision still has it).
"""

from __future__ import annotations

import sys

_ALIAS = "torchvision.transforms.functional_tensor"


def install() -> None:
    if _ALIAS in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
        return
    except ImportError:
        pass
    import torchvision.transforms.functional as functional

    sys.modules[_ALIAS] = functional
