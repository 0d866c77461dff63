"""``python -m dr2net_mm.points convert RAW_DIR OUT_DIR`` (raw S3DIS release -> ``Area_k_room.npy``)
and ``python -m dr2net_mm.points check FOLDER`` (load and check every room): see
:mod:`dr2net_mm.points.s3dis` and docs/s3dis.md."""
from .s3dis import main

main()
