"""Deprecated module name, kept so that old imports and ``python -m dr2net_mm.points.demo_rooms``
work: the synthetic rooms are in :mod:`dr2net_mm.demo.rooms`."""
from ..demo.rooms import DEMO_CHECKPOINT, main, make_demo_rooms, make_room

__all__ = ['DEMO_CHECKPOINT', 'main', 'make_demo_rooms', 'make_room']

if __name__ == '__main__':
    main()
