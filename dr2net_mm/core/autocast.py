"""Which autocast settings a recomputation replays.

The backward recomputes each residual function under the autocast settings its forward ran with, so
that it computes the same values. ``autocast_state(device)`` reads them for the device's type, as the
keyword arguments of ``torch.autocast``. torch >= 2.4 asks by device type; older releases (2.1 ... 2.3)
have one query per device kind, used here when the newer one is missing.
"""
import torch


def autocast_state(device: torch.device) -> dict:
    """``dict(device_type, enabled, dtype, cache_enabled)`` of the autocast in force for ``device``."""
    kind = device.type
    try:
        enabled, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # torch < 2.4
        if kind == 'cuda':
            enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        elif kind == 'cpu':
            enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            enabled, dtype = False, torch.bfloat16
    return dict(device_type=kind, enabled=enabled, dtype=dtype,
                cache_enabled=torch.is_autocast_cache_enabled())
