"""Give chosen modules another forward by class, not by instance.

A forward set on an instance (`layer.forward = functools.partial(f, layer)`) is a new object per layer, and
torch.compile guards on its identity: regional compilation of the Llama decoder layers then recompiles every layer
until dynamo's recompile limit (8) and runs the rest eagerly (torch 2.11 on the H200, docs/PERFORMANCE.md). Moving
the instance to a subclass whose forward is `forward` gives every patched layer the same class, so the layers share
one graph. The subclass keeps the class's name and module (same repr and logs; state dicts never see classes), and
`isinstance` checks against the original class still hold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

_ORIGINAL = "_vla_unpatched_class"


@functools.cache
def _patched_class(cls: type[nn.Module], forward: Callable) -> type[nn.Module]:
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__, _ORIGINAL: cls})


def patch_forward(module: nn.Module, forward: Callable) -> None:
    """Run `forward(module, *args, **kwargs)` as `module`'s forward from now on (replacing an earlier patch)."""
    module.__class__ = _patched_class(_original_class(module), forward)


def unpatch_forward(module: nn.Module) -> None:
    """Undo `patch_forward` (nothing changes where `module` is not patched)."""
    module.__class__ = _original_class(module)


def _original_class(module: nn.Module) -> type[nn.Module]:
    """The class `module` had before `patch_forward` (its own class where it is not patched)."""
    return vars(type(module)).get(_ORIGINAL, type(module))


def original_forward(module: nn.Module, *args, **kwargs):
    """The forward `module` would run unpatched (for a patched forward's fallback)."""
    return _original_class(module).forward(module, *args, **kwargs)
