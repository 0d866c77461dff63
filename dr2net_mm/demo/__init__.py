"""Generated demo data (nothing to download) and what the demo scripts share.

* :mod:`.data`: the COCO-format and ADE20K-layout image sets, stand-in pretrained checkpoints;
* :mod:`.rooms`: synthetic S3DIS-layout point-cloud rooms;
* :mod:`.digits`: scikit-learn's bundled handwritten digits for ``make reproduce`` (tools/reproduce.py);
* :mod:`.runs`: running a tool from a demo script with a live, filtered view of its output.
"""
